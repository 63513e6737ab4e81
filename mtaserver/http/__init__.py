"""The HTTP APIs: Transmissions, Command, Configuration and Monitoring."""
