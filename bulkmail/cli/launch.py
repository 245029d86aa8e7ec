"""The ``bulkmail`` command's first step: a Ctrl-C while Python loads bulkmail is one line.

Loading the CLI (typer, rich, jinja2, premailer, lxml...) takes a few tenths of a second,
before `bulkmail.cli.app.main` has set up its signal handling. A Ctrl-C then would end in a
traceback of whatever module was being imported; here it ends like any other Ctrl-C
before sending: one line, exit 130, nothing done. This module imports nothing heavy (the
package's ``__init__`` loads its exports lazily) so the window is Python's own start-up.
"""

from __future__ import annotations

import atexit
import gc
import sys


def main() -> None:
    """Entry point of the ``bulkmail`` console script and of ``python -m bulkmail``."""
    # As the process ends, the interpreter's last collection would walk every object the
    # command made (50-90 ms after a run, a sixth of a short command's time) only to free
    # memory the exit frees anyway. Files and journals are closed by their with-blocks,
    # and atexit handlers registered later (multiprocessing's) run before this one.
    atexit.register(gc.freeze)
    try:
        from bulkmail.cli import app
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; nothing was sent.\n")
        raise SystemExit(130) from None
    app.main()
