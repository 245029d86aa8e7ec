"""The ``bulkmail`` command: a thin layer of arguments, progress and exit codes over the
library API. Nothing here is imported by the library."""
