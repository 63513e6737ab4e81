"""SMTP both ways: reception (the ESMTP server) and delivery (the client, MX lookup, DSNs, DKIM)."""
