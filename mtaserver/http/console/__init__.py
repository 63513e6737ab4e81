"""The web console on the management port: `ConsoleUI` and its chart `History`."""

from mtaserver.http.console.history import History, history_service
from mtaserver.http.console.resource import ConsoleUI

__all__ = ["ConsoleUI", "History", "history_service"]
