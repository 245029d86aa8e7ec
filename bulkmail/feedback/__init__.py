"""What comes back after sending: bounces, complaints, unsubscribe requests, read from a
mailbox into the suppression list."""
