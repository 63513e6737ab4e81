"""The HTTP client both webhooks share: TLS policy, connection pool, one bounded POST.

`make_client` builds a treq `HTTPClient` over an `Agent` with a persistent
`HTTPConnectionPool`, a connect timeout, and a TLS policy that verifies the server's
certificate (service-identity hostname check) against the system CAs or a CA file, and
can present a client certificate. `post` sends one body and reads at most
`MAX_RESPONSE_BYTES` of the reply within an I/O timeout measured on the injected clock,
never following a redirect: an endpoint answering with an endless body cannot grow the
server's memory (a 1 GB answer once took RSS to 1.9 GB), the connection is dropped.
`parse_extra_headers` reads the `Name: value` files of `http-webhook-extra-headers`
and `http-delivery-extra-headers`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import attrs
import treq
from twisted.internet import defer, protocol, ssl
from twisted.internet.interfaces import IHostnameResolver, IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, PotentialDataLoss, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

from mtaserver.config.targets import TargetPolicy
from mtaserver.runtime import Clock
from mtaserver.webhooks.guard import GuardedEndpointFactory, TargetSource


class HttpClient(Protocol):
    """The part of treq's `HTTPClient` (and of `treq.testing.StubTreq`) used here."""

    def request(self, method: str, url: str, **kwargs: Any) -> defer.Deferred[Any]: ...


@attrs.frozen
class PostResult:
    """The reply to one POST: status code, phrase and (the start of) the body."""

    code: int
    phrase: str
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


@implementer(IBodyProducer)
class BytesProducer:
    """A body already in memory, written in one go (treq's default feeds 64 KiB slices
    through a cooperator that idles between them, which halves throughput for MB bodies)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:  # noqa: N802
        consumer.write(self.body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:  # noqa: N802
        pass

    def resumeProducing(self) -> None:  # noqa: N802
        pass

    def stopProducing(self) -> None:  # noqa: N802
        pass


#: The most of a webhook's (or `http-delivery` receiver's) answer that is read. Only
#: its status matters and a short text for the log; the rest is never read.
MAX_RESPONSE_BYTES = 64 * 1024


class BoundedBody(protocol.Protocol):
    """Collects at most `limit` bytes of a response body, then drops the connection.

    `done` fires with the bytes kept, at the body's end or as soon as `limit` is
    reached (the transport is then stopped, so the connection is not reused).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        if self.done.called:
            return
        room = self.limit - self.size
        self.chunks.append(data[:room])
        self.size += min(len(data), room)
        if len(data) >= room:
            self.truncated = True
            self.done.callback(b"".join(self.chunks))
            assert self.transport is not None
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


def read_bounded(response: Any, limit: int = MAX_RESPONSE_BYTES) -> defer.Deferred[bytes]:
    """At most `limit` bytes of `response`'s body; a longer body is cut off unread."""
    reader = BoundedBody(limit)
    response.deliverBody(reader)
    return reader.done


class PostTimeout(Exception):
    """No complete reply within the I/O timeout."""


@implementer(IPolicyForHTTPS)
class VerifyingPolicy:
    """Like `BrowserLikePolicyForHTTPS`, with our own trust roots and client certificate."""

    def __init__(self, trust_root: Any = None, client_certificate: Any = None) -> None:
        self.trust_root = trust_root if trust_root is not None else ssl.platformTrust()
        self.client_certificate = client_certificate

    def creatorForNetloc(  # noqa: N802 - Twisted's name
        self, hostname: bytes, port: int
    ) -> IOpenSSLClientConnectionCreator:
        return ssl.optionsForClientTLS(
            hostname.decode("ascii"),
            trustRoot=self.trust_root,
            clientCertificate=self.client_certificate,
        )


def policy_from_files(ca_file: str | None, certificate: str | None) -> VerifyingPolicy:
    """The TLS policy for a CA file (PEM, one or more CAs) and a client PEM (cert + key).

    Blocking file reads: call at start-up, not on a running reactor.
    """
    trust_root = None
    if ca_file:
        with open(ca_file, "rb") as f:
            pem = f.read()
        certs = [
            ssl.Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + part)
            for part in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]
        ]
        if not certs:
            raise ValueError(f"{ca_file}: no certificate found")
        trust_root = ssl.trustRootFromCertificates(certs)
    client_certificate = None
    if certificate:
        with open(certificate, "rb") as f:
            client_certificate = ssl.PrivateCertificate.loadPEM(f.read())
    return VerifyingPolicy(trust_root, client_certificate)


class PooledClient:
    """A treq client over a persistent connection pool; `close()` drops idle connections.

    Every new connection goes through `GuardedEndpointFactory`: the host is resolved
    and each address checked against `targets()` (by default nothing private,
    loopback or link-local), so a refused address is never connected to.
    """

    def __init__(
        self,
        reactor: Any,
        policy: VerifyingPolicy | None = None,
        connect_timeout: float = 30.0,
        max_per_host: int = 32,
        *,
        targets: TargetSource = TargetPolicy,
        resolver: IHostnameResolver | None = None,
    ) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = max_per_host
        endpoints = GuardedEndpointFactory(
            reactor, targets, policy or VerifyingPolicy(), connect_timeout, resolver
        )
        agent = Agent.usingEndpointFactory(reactor, endpoints, pool=self.pool)
        self.client = treq.client.HTTPClient(agent)

    def request(self, method: str, url: str, **kwargs: Any) -> defer.Deferred[Any]:
        if isinstance(kwargs.get("data"), bytes):
            kwargs["data"] = BytesProducer(kwargs["data"])
        return self.client.request(method, url, **kwargs)

    def close(self) -> defer.Deferred[None]:
        return self.pool.closeCachedConnections()


def parse_extra_headers(text: str, source: str = "extra headers") -> list[tuple[str, str]]:
    """`Name: value` lines (blank lines and `#` comments skipped) as pairs; bad lines raise."""
    headers = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition(":")
        name = name.strip()
        if not sep or not name or any(c in name for c in ' \t()<>@,;\\"/[]?={}'):
            raise ValueError(f"{source}:{number}: expected `Name: value`")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"{source}:{number}: bad header value")
        headers.append((name, value.strip()))
    return headers


def read_extra_headers(path: str | None) -> list[tuple[str, str]]:
    """The headers in file `path` (none if no path). Blocking: run in a thread."""
    if not path:
        return []
    with open(path, encoding="utf-8") as f:
        return parse_extra_headers(f.read(), path)


def build_headers(defaults: Iterable[tuple[str, str]], extra: Iterable[tuple[str, str]]) -> Headers:
    """`defaults` overridden by `extra` (an extra header replaces a default of that name)."""
    headers = Headers()
    extra = list(extra)
    replaced = {name.lower() for name, _ in extra}
    for name, value in defaults:
        if name.lower() not in replaced:
            headers.addRawHeader(name, value)
    for name, value in extra:
        headers.addRawHeader(name, value)
    return headers


async def post(
    client: HttpClient,
    clock: Clock,
    url: str,
    body: bytes,
    headers: Headers,
    io_timeout: float,
    keep_body: int = 512,
    max_response: int = MAX_RESPONSE_BYTES,
) -> PostResult:
    """POST `body` and read the reply (at most `max_response` bytes) within `io_timeout`.

    The response is unbuffered (treq would otherwise buffer the whole body, however
    large) and only its first `max_response` bytes are read; after that the connection
    is dropped and the answer's status stands.

    Raises `PostTimeout` on timeout and whatever the agent raises on a connection or
    TLS failure. Redirects are returned, not followed.
    """

    async def exchange() -> PostResult:
        response = await client.request(
            "POST", url, data=body, headers=headers, allow_redirects=False, unbuffered=True
        )
        content = await read_bounded(response, max_response)
        phrase = response.phrase
        if isinstance(phrase, bytes):
            phrase = phrase.decode("latin-1")
        return PostResult(int(response.code), str(phrase), content[:keep_body])

    d = defer.Deferred.fromCoroutine(exchange())
    timed_out: list[bool] = []

    def on_timeout(result: Any, timeout: float) -> Any:
        timed_out.append(True)  # the agent reports the cancel in its own exception types
        return result

    d.addTimeout(io_timeout, clock, onTimeoutCancel=on_timeout)  # type: ignore[arg-type]
    try:
        return await d
    except Exception:
        if timed_out:
            raise PostTimeout(f"no reply within {io_timeout:g}s") from None
        raise


def describe_error(exc: BaseException) -> str:
    """A short operator-readable reason for a failed POST."""
    text = str(exc) or type(exc).__name__
    reasons = getattr(exc, "reasons", None)  # ResponseNeverReceived, RequestTransmissionFailed
    if reasons:
        text = "; ".join(str(r.value) or type(r.value).__name__ for r in reasons)
    return " ".join(text.split())[:300]
