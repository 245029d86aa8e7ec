"""``python -m bulkmail``: the same as the ``bulkmail`` command."""

from bulkmail.launch import main

main()
