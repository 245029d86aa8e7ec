"""Turn one recipient's row into the exact bytes of their mail: templates rendered
(sandboxed), CSS inlined once per skeleton, the text part, the MIME message; on every
core, in list order."""
