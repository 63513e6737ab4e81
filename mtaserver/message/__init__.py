"""Message intake: what SMTP reception and the Transmissions API share."""
