"""DKIM on the way out: sign a message for a queue with `dkim-sign yes`.

Signing is CPU work proportional to the body, so it runs in the thread pool; the
scheduler calls this as its body transform just before a transaction is handed to
the SMTP client. A message whose From domain has no `domain-key` goes out unsigned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from mtaserver.config.model import DomainSettings
from mtaserver.events import Envelope
from mtaserver.smtp.dkim import DkimError, DkimSigner

log = Logger()


class DkimTransform:
    def __init__(self, signer: DkimSigner, run_in_thread: Callable[[Callable[[], Any]], Any]):
        self.signer = signer
        self.run_in_thread = run_in_thread

    async def __call__(self, envelope: Envelope, body: bytes, settings: DomainSettings) -> bytes:
        if not settings.dkim_sign:
            return body
        domain = self.signer.signing_domain_for(body)
        if domain is None:
            return body
        try:
            signed: bytes = await self.run_in_thread(
                lambda: self.signer.sign(body, domain, settings.dkim_identity)
            )
        except DkimError as exc:
            log.warn("not DKIM-signing {msg_id}: {error}", msg_id=envelope.msg_id, error=exc)
            return body
        return signed
