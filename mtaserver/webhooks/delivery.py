"""`type http-delivery`: each message and recipient POSTed as JSON to `http-delivery-url`.

An `IDeliverer` like the SMTP one: one session is a loop of POSTs (so `max-smtp-out`
bounds the parallel POSTs of a queue), each result is reported to the scheduler as an
SMTP-like reply and the scheduler does the rest. A 2xx is delivery (`d`, dlvType
`http`); any other status, a timeout, a connection or TLS failure is a transient
failure (`t`, then `retry-after`, and `bounce-after` expiry with a DSN), exactly like
an SMTP queue. Redirects are not followed.

The body is PowerMTA's sample layout:
`{"msg_from", "rcpt_to", "content": {"email_rfc822", "email_rfc822_is_base64"?,
"headers": [{"Name": "value"}, ...]}}` — the message is sent as text when it is valid
UTF-8 and base64 otherwise. `http-delivery-extra-headers FILE` adds headers.
"""

from __future__ import annotations

import base64
import functools
import json
from typing import Any

import attrs
from twisted.logger import Logger

from mtaserver.queue.delivery import (
    LOCAL_INFO,
    QueueLevelFailure,
    SessionJob,
    Transaction,
    TransactionResult,
)
from mtaserver.runtime import Clock, RunInThread
from mtaserver.smtp_reply import Reply
from mtaserver.webhooks.http import (
    HttpClient,
    PostTimeout,
    build_headers,
    describe_error,
    post,
    read_extra_headers,
)

log = Logger()

HTTP_INFO = attrs.evolve(LOCAL_INFO, destination_host="http")  # dlvType http


def message_headers(body: bytes) -> list[dict[str, str]]:
    """The header fields of a message as `[{"Name": "value"}, ...]`, unfolded, in order."""
    end = body.find(b"\r\n\r\n")
    block = body if end < 0 else body[: end + 2]
    headers: list[list[str]] = []
    for raw in block.split(b"\r\n"):
        if not raw:
            continue
        line = raw.decode("utf-8", "replace")
        if line[:1] in (" ", "\t"):
            if headers:
                headers[-1][1] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if sep:
            headers.append([name.strip(), value.strip()])
    return [{name: value} for name, value in headers]


def delivery_payload(sender: str, recipient: str, body: bytes) -> bytes:
    """The JSON POSTed for one message to one recipient."""
    content: dict[str, Any] = {}
    try:
        content["email_rfc822"] = body.decode("utf-8")
    except UnicodeDecodeError:
        content["email_rfc822"] = base64.b64encode(body).decode("ascii")
        content["email_rfc822_is_base64"] = True
    content["headers"] = message_headers(body)
    payload = {"msg_from": sender, "rcpt_to": recipient, "content": content}
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


class HttpDeliverer:
    """Delivers a queue's messages to its `http-delivery-url`, one POST per recipient."""

    def __init__(
        self,
        client: HttpClient,
        clock: Clock,
        run_in_thread: RunInThread,
        io_timeout: float = 60.0,
    ) -> None:
        self.client = client
        self.clock = clock
        self.io_timeout = io_timeout
        self._run_in_thread = run_in_thread

    async def run(self, job: SessionJob) -> None:
        url = job.settings.http_delivery_url
        if not url:
            raise QueueLevelFailure(
                "4.3.5",
                "type http-delivery needs http-delivery-url",
                bounce_cat="bad-configuration",
            )
        try:
            extra = await self._run_in_thread(
                functools.partial(read_extra_headers, job.settings.http_delivery_extra_headers)
            )
        except (OSError, ValueError) as e:
            raise QueueLevelFailure(
                "4.3.5", f"http-delivery-extra-headers: {e}", bounce_cat="bad-configuration"
            ) from e
        headers = build_headers(
            [("Content-Type", "application/json"), ("User-Agent", "mtaserver")], extra
        )
        while (transaction := await job.next_transaction()) is not None:
            replies = []
            for recipient in transaction.recipients:
                replies.append(await self._post_one(url, headers, transaction, recipient.address))
            job.report(TransactionResult(transaction, tuple(replies), HTTP_INFO))

    async def _post_one(
        self, url: str, headers: Any, transaction: Transaction, recipient: str
    ) -> Reply:
        body = await self._run_in_thread(
            functools.partial(
                delivery_payload, transaction.envelope.sender, recipient, transaction.body
            )
        )
        try:
            result = await post(self.client, self.clock, url, body, headers, self.io_timeout)
        except PostTimeout as e:
            return Reply(451, "4.4.2", f"http-delivery {url}: {e}")
        except Exception as e:
            return Reply(451, "4.4.1", f"http-delivery {url}: {describe_error(e)}")
        if result.ok:
            return Reply(250, "2.0.0", f"HTTP {result.code} {result.phrase}".strip())
        text = result.body.decode("utf-8", "replace").strip().replace("\n", " ")[:200]
        return Reply(451, "4.4.0", f"HTTP {result.code} {result.phrase} {text}".strip())
