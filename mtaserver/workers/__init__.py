"""SMTP reception in worker processes, the master keeping queue, delivery and accounting."""

from mtaserver.workers.pool import Handoff, ReceptionWorkers, workers_for

__all__ = ["Handoff", "ReceptionWorkers", "workers_for"]
