"""``python -m bulkmail``: the same as the ``bulkmail`` command."""

from bulkmail.cli.launch import main

main()
