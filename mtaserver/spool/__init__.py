"""The durable spool: message files, the journal, and recovery after a crash."""

from mtaserver.spool.errors import CorruptMessageError, SpoolError, SpoolFullError, SpoolIOError
from mtaserver.spool.journal import Journal, JournalPosition, read_events
from mtaserver.spool.recovery import (
    PendingRecipient,
    RecoveredMessage,
    RecoveredSpool,
    open_spool,
    recover,
)
from mtaserver.spool.store import MessageStore, MessageWriter

__all__ = [
    "CorruptMessageError",
    "Journal",
    "JournalPosition",
    "MessageStore",
    "MessageWriter",
    "PendingRecipient",
    "RecoveredMessage",
    "RecoveredSpool",
    "SpoolError",
    "SpoolFullError",
    "SpoolIOError",
    "open_spool",
    "read_events",
    "recover",
]
