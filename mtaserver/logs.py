"""Log observers for operators: JSON lines for log shippers, with secrets redacted.

`twistd --logger mtaserver.logs.json_observer -n mtaserver` writes one JSON object per
event to stdout (twisted.logger's own JSON format, so structured fields survive). A
field named like a credential (`password`, `api_key`, `bind_password`,
`http_webhook_hmac_key`, `authorization`...; `config.redact.SECRET_FIELDS`) is written as
`********`, wherever it is nested, so a log line never carries a secret.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.logger import ILogObserver, jsonFileLogObserver
from zope.interface import implementer

from mtaserver.config.redact import SECRET_FIELDS, redact_values


@implementer(ILogObserver)
class RedactingObserver:
    """Passes each event on with the values of its secret fields replaced."""

    def __init__(self, observer: ILogObserver) -> None:
        self.observer = observer

    def __call__(self, event: dict[str, Any]) -> None:
        if any(_has_secret(value, key) for key, value in event.items()):
            event = redact_event(event)
        self.observer(event)


def _has_secret(value: Any, key: Any = None) -> bool:
    if str(key).lower() in SECRET_FIELDS:
        return True
    if isinstance(value, dict):
        return any(_has_secret(v, k) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_secret(v) for v in value)
    return False


def redact_event(event: dict[str, Any]) -> dict[str, Any]:
    """A copy of `event` with secret fields redacted (log_* bookkeeping kept as is)."""
    redacted = {}
    for key, value in event.items():
        if key.startswith("log_"):
            redacted[key] = value
        else:
            redacted[key] = redact_values({key: value})[key]
    return redacted


def json_observer() -> ILogObserver:
    """A twistd `--logger` factory: every event as a JSON line on stdout, secrets redacted."""
    return RedactingObserver(jsonFileLogObserver(sys.stdout, recordSeparator=""))
