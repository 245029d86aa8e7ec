"""Hand built mails over: through one verified SMTP connection at the configured rate, or
into a folder of previews. Only deliver/smtp.py speaks SMTP."""
