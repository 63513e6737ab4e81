"""The operator's mail log (`log-file`): PowerMTA's log of sessions, commands and failures."""

from mtaserver.maillog.log import ApiTrace, InboundTrace, MailLog, OutboundTrace
from mtaserver.maillog.logfile import LogFile
from mtaserver.maillog.service import MailLogService

__all__ = ["ApiTrace", "InboundTrace", "LogFile", "MailLog", "MailLogService", "OutboundTrace"]
