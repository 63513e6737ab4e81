"""The limits every HTTP request meets before a handler sees it, on both HTTP ports.

Twisted's `HTTPChannel` only knows an idle timeout, reads any body into memory or a
temporary file before the resource runs, and knows nothing of who is asking. So a
trickling client (slowloris) holds a connection for ever, and a 2 GB POST without a
key lands on disk before its 403. `GuardedChannel` closes those gaps in one place, for
the management port and every Transmissions API listener alike:

* **deadlines**: the request line and all headers must arrive within
  `http-request-header-timeout` (counted from the connection, or from the end of the
  previous response, so an idle keep-alive connection is closed too), and the body
  within `http-request-body-timeout`; on expiry a 408 (or, when nothing of a request
  came, a silent close);
* **rate**: at most `http-max-request-rate` requests per client IP (a token bucket:
  the count is also the burst), except from `http-rate-limit-exempt` networks; over
  it, a 429 with `Retry-After`;
* **before the body**: once the headers are complete the port's `PortPolicy` checks
  the length against its limit (413; 411 where a length is required) and the
  credentials it can check without the body (403/401), and a refused request is
  answered without reading its body;
* **while streaming**: a chunked body is counted as it arrives, and reading stops
  with a 413 as soon as it passes the limit.

A refusal is written straight to the transport with `Connection: close`, in the port's
JSON error shape (`{"errors":[{"message","description"}]}`, inside the management
envelope on that port); the connection is then half-closed and whatever the client
still sends is discarded for a moment (`LINGER`), so it reads the answer instead of a
reset. Settings are read from the running config on every request, so `reload`
applies them.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs
from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from mtaserver.config.model import GlobalSettings
from mtaserver.config.reload import ConfigHolder
from mtaserver.config.values import IPNetwork, Rate
from mtaserver.http.access import LEVELS, api_key_error, error_body, level_for
from mtaserver.http.errors import APIError

log = Logger()

#: Seconds a refused connection is drained (half-closed) before it is aborted.
LINGER = 5.0
#: Client IPs tracked by the rate limiter before full buckets are forgotten.
MAX_TRACKED_CLIENTS = 10_000


@attrs.frozen
class RequestHead:
    """What is known of a request once its headers are complete."""

    method: bytes
    path: bytes  # without the query string
    headers: Headers
    client_ip: str
    length: int | None  # Content-Length, 0 without a body, None for chunked

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


class PortPolicy(Protocol):
    """What differs between the two HTTP ports."""

    def max_body(self) -> int:
        """The largest request body accepted, in bytes."""

    def admit(self, head: RequestHead) -> APIError | None:
        """A refusal decided from the headers alone (credentials, length), or None."""

    def error_body(self, error: APIError) -> bytes:
        """The port's JSON error body."""


# -- rate ---------------------------------------------------------------------------


def take_token(
    bucket: tuple[float, float] | None, now: float, rate: Rate
) -> tuple[tuple[float, float], float]:
    """One request against a token bucket: (the new bucket, 0 or seconds to wait).

    A bucket is (tokens, time of the last update); it holds at most `rate.count`
    tokens and refills at `rate.count / rate.per_seconds` a second.
    """
    capacity = float(rate.count)
    refill = rate.count / rate.per_seconds
    tokens, last = bucket if bucket is not None else (capacity, now)
    tokens = min(capacity, tokens + max(0.0, now - last) * refill)
    if tokens >= 1.0:
        return (tokens - 1.0, now), 0.0
    return (tokens, now), (1.0 - tokens) / refill


def is_exempt(client_ip: str, networks: Iterable[IPNetwork]) -> bool:
    """Whether `client_ip` (IPv4-mapped IPv6 counts as IPv4) is in one of `networks`."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address.version == n.version and address in n for n in networks)


class RateLimiter:
    """`http-max-request-rate` per client IP, one token bucket each."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def wait(self, client_ip: str, rate: Rate) -> float:
        """Take a token for `client_ip`: 0, or the seconds until one is available."""
        now = self.clock.seconds()
        if len(self._buckets) >= MAX_TRACKED_CLIENTS:
            self._forget_full(now, rate)
        bucket, wait = take_token(self._buckets.get(client_ip), now, rate)
        self._buckets[client_ip] = bucket
        return wait

    def _forget_full(self, now: float, rate: Rate) -> None:
        full_after = rate.per_seconds
        for ip, (_tokens, last) in list(self._buckets.items()):
            if now - last >= full_after:
                del self._buckets[ip]


# -- the two ports ------------------------------------------------------------------


def is_console(path: bytes) -> bool:
    """Whether `path` is the web console's (`/` and `/ui/...`), which browsers open."""
    return path == b"/" or path.startswith(b"/ui/")


class ManagementPolicy:
    """The management port: `http-mgmt-max-request-size`, access level from the headers.

    The level an address or an `X-API-Key` gives is known from the headers; a request
    below what its path needs (`monitor`, `admin` for a config commit, nothing for the
    OpenAPI document) is refused before its body. An HTTP Basic login to an
    `http-auth-ldap` directory needs the directory, so it is decided by the handler
    (its body still capped).
    """

    def __init__(self, holder: ConfigHolder) -> None:
        self.holder = holder

    def max_body(self) -> int:
        return self.holder.config.settings.http_mgmt_max_request_size

    def admit(self, head: RequestHead) -> APIError | None:
        settings = self.holder.config.settings
        if head.path == b"/api/v1/openapi.json":
            return None
        needed = "admin" if head.path == b"/configFile" and head.method == b"POST" else "monitor"
        authorization = head.header(b"authorization") or b""
        if settings.http_auth_ldap and authorization.lower().startswith(b"basic "):
            return None
        key = head.header(b"x-api-key")
        try:
            level = level_for(
                settings, head.client_ip, key.decode("utf-8", "replace") if key else None
            )
        except APIError as error:
            return error
        if LEVELS[level] >= LEVELS[needed]:
            return None
        if settings.http_auth_ldap and not authorization and is_console(head.path):
            # A browser asks for a login on a Basic challenge (`check` adds it).
            return APIError(401, "Login required", "log in with a directory account")
        if level == "none":
            return APIError(403, "Access denied", "no http-access rule grants this address")
        return APIError(403, "Access denied", f"this needs {needed} access, you have {level}")

    def error_body(self, error: APIError) -> bytes:
        return json.dumps(error_body(error)).encode()


class TransmissionsPolicy:
    """The Transmissions API: `max-request-size`, the `Authorization` key, a length."""

    PATH = b"/api/v1/transmissions"

    def __init__(self, holder: ConfigHolder) -> None:
        self.holder = holder

    def max_body(self) -> int:
        return self.holder.config.api.max_request_size

    def admit(self, head: RequestHead) -> APIError | None:
        if head.method != b"POST" or head.path.rstrip(b"/") != self.PATH:
            return None  # the handler answers 404/405; the body is still capped
        refused = api_key_error(head.header(b"authorization"), self.holder.config.api.api_key)
        if refused is not None:
            return refused
        if head.length == 0 and head.header(b"content-length") is None:
            return APIError(411, "Length required", "send Content-Length (or a chunked body)")
        return None

    def error_body(self, error: APIError) -> bytes:
        return error.body()


class RequestGuard:
    """The limits of one HTTP port: its policy, the running settings, a rate limiter."""

    def __init__(
        self,
        holder: ConfigHolder,
        policy: PortPolicy,
        clock: IReactorTime,
        on_refused: Callable[[RequestHead, APIError], None] | None = None,
    ) -> None:
        self.holder = holder
        self.policy = policy
        self.clock = clock
        self.limiter = RateLimiter(clock)
        #: Told of each request refused before its body but a 429 (the mail log's
        #: `log-requests`); a flood must not flood a log.
        self.on_refused = on_refused

    @property
    def settings(self) -> GlobalSettings:
        return self.holder.config.settings

    def check(self, head: RequestHead) -> tuple[APIError, dict[bytes, bytes]] | None:
        """The refusal of a request (and its extra headers) from its headers, or None."""
        settings = self.settings
        rate = settings.http_max_request_rate
        if rate is not None and not is_exempt(head.client_ip, settings.http_rate_limit_exempt):
            wait = self.limiter.wait(head.client_ip, rate)
            if wait > 0:
                seconds = max(1, math.ceil(wait))
                return (
                    APIError(
                        429,
                        "Too many requests",
                        f"over http-max-request-rate ({rate.count} per "
                        f"{rate.per_seconds:g}s); retry after {seconds}s",
                    ),
                    {b"Retry-After": str(seconds).encode()},
                )
        refusal = self.policy.admit(head)  # credentials first: a stranger learns no limit
        if refusal is not None:
            if refusal.code == 401 and settings.http_auth_ldap:
                return refusal, {b"WWW-Authenticate": b'Basic realm="mtaserver"'}
            return refusal, {}
        limit = self.policy.max_body()
        if head.length is not None and head.length > limit:
            return _too_large(limit), {}
        return None


def _too_large(limit: int) -> APIError:
    return APIError(413, "Request body too large", f"the limit is {limit} bytes")


# -- the channel --------------------------------------------------------------------


class GuardedRequest(Request):
    """A request whose body bytes are counted by its channel as they arrive."""

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if isinstance(channel, GuardedChannel) and not channel.body_received(len(data)):
            return
        super().handleContentChunk(data)


class GuardedChannel(HTTPChannel):
    """`HTTPChannel` with whole-request deadlines, a rate limit and checks before the body."""

    guard: RequestGuard

    def __init__(self) -> None:
        super().__init__()
        self._deadline: IDelayedCall | None = None
        self._linger: IDelayedCall | None = None
        self._refused = False
        self._started = False  # bytes of the next request have arrived
        self._body_bytes = 0
        self._body_limit = 0

    # -- deadlines

    def _arm(self, seconds: float, phase: str) -> None:
        self._disarm()
        if seconds > 0:
            self._deadline = self.guard.clock.callLater(seconds, self._expired, phase, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _expired(self, phase: str, seconds: float) -> None:
        self._deadline = None
        if self._refused or self._handlingRequest:
            return
        peer = self._client_ip()
        if phase == "header" and not self._started:
            log.debug("HTTP connection from {peer} idle for {seconds}s", peer=peer, seconds=seconds)
            self.loseConnection()
            return
        what = "request line and headers" if phase == "header" else "request body"
        log.info(
            "HTTP {what} from {peer} not complete within {seconds}s: 408",
            what=what,
            peer=peer,
            seconds=seconds,
        )
        self.refuse(APIError(408, "Request timeout", f"the {what} must arrive within {seconds:g}s"))

    # -- HTTPChannel hooks

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm(self.guard.settings.http_request_header_timeout, "header")

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if data and not self._handlingRequest:
            self._started = True
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if not self._refused:
            super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        self._disarm()
        request = self.requests[-1]
        head = RequestHead(
            method=self._command,
            path=self._path.split(b"?", 1)[0],
            headers=request.requestHeaders,
            client_ip=self._client_ip(),
            length=self.length,
        )
        refusal = self.guard.check(head)
        if refusal is not None:
            error, headers = refusal
            emit = log.debug if error.code == 429 else log.info  # a flood must not flood the log
            emit(
                "HTTP {method} {path} from {peer} refused before the body: {code} {message}",
                method=head.method.decode("ascii", "replace"),
                path=head.path.decode("utf-8", "replace")[:200],
                peer=head.client_ip,
                code=error.code,
                message=error.message,
            )
            if self.guard.on_refused is not None and error.code != 429:
                self.guard.on_refused(head, error)
            self.refuse(error, headers)
            return
        self._body_bytes = 0
        self._body_limit = self.guard.policy.max_body()
        super().allHeadersReceived()
        if self.length != 0:
            self._arm(self.guard.settings.http_request_body_timeout, "body")

    def body_received(self, count: int) -> bool:
        """Count body bytes; False (and a 413) once the body passes the port's limit."""
        if self._refused:
            return False
        self._body_bytes += count
        if self._body_bytes > self._body_limit:
            self.refuse(_too_large(self._body_limit))
            return False
        return True

    def allContentReceived(self) -> None:
        if self._refused:
            return
        self._disarm()
        self._started = False
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        self._started = False
        if self.persistent:  # the next request's deadline runs from the end of this one
            self._arm(self.guard.settings.http_request_header_timeout, "header")
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)

    # -- refusing

    def _client_ip(self) -> str:
        peer = self.transport.getPeer() if self.transport is not None else None
        return str(getattr(peer, "host", "") or "")

    def refuse(self, error: APIError, headers: dict[bytes, bytes] | None = None) -> None:
        """Answer `error` at once, close, and discard the rest of what the client sends."""
        if self._refused:
            return
        self._refused = True
        self._disarm()
        body = self.guard.policy.error_body(error)
        lines = [
            b"HTTP/1.1 %d %s" % (error.code, RESPONSES.get(error.code, b"Error")),
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(body),
            b"Connection: close",
        ]
        lines += [name + b": " + value for name, value in (headers or {}).items()]
        transport: Any = self.transport
        transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        self._networkProducer.unregisterProducer()  # type: ignore[attr-defined]
        if isinstance(transport, tcp.Connection):
            # Half-close and drain: closing with unread input would reset the connection
            # and the client might never read the answer.
            transport.resumeProducing()
            transport.loseWriteConnection()
            self._linger = self.guard.clock.callLater(LINGER, transport.abortConnection)
        else:
            transport.loseConnection()


class GuardedSite(Site):
    """A `Site` whose connections are `GuardedChannel`s of one `RequestGuard`.

    `json_api` is for a port that takes only JSON at a high rate (the Transmissions
    API): Twisted neither parses POST bodies as forms (its content-type parsing
    through `email` was a tenth of a single-recipient transmission's CPU) nor writes
    its access-log line to the service log for every request; `log-requests` in
    `<transmissions-api>` puts the requests in the mail log where they are wanted.
    """

    protocol = GuardedChannel  # type: ignore[assignment]
    requestFactory = GuardedRequest

    def __init__(
        self, resource: IResource, guard: RequestGuard, *, json_api: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(
            resource, reactor=guard.clock, parsePOSTFormSubmission=not json_api, **kwargs
        )
        self.guard = guard
        self.json_api = json_api
        self.displayTracebacks = False

    def log(self, request: Any) -> None:
        if not self.json_api:
            super().log(request)

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.guard = self.guard
        return channel


def management_guard(holder: ConfigHolder, clock: IReactorTime) -> RequestGuard:
    """The management port's guard."""
    return RequestGuard(holder, ManagementPolicy(holder), clock)


def transmissions_guard(
    holder: ConfigHolder,
    clock: IReactorTime,
    on_refused: Callable[[RequestHead, APIError], None] | None = None,
) -> RequestGuard:
    """The Transmissions API's guard (one for all its listeners: one rate per client)."""
    return RequestGuard(holder, TransmissionsPolicy(holder), clock, on_refused)
