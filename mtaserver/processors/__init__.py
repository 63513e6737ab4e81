"""The report processors (`<bounce-processor>`, `<feedback-loop-processor>`) as a service."""

from mtaserver.processors.service import ReportProcessor

__all__ = ["ReportProcessor"]
