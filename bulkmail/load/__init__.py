"""Read what the user wrote: the campaign YAML and the recipient CSV, checked, every
problem with its file, line and field."""
