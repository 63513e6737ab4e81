"""Who may do what on the management port: `none`, `monitor` or `admin`.

PowerMTA's rules: the first `http-access CIDR LEVEL` that contains the client address
decides (no match is `none`), and a request carrying `X-API-Key: <http-api-key>`
is `admin` wherever it comes from. A key that is present but wrong is a 401, not a
silent fall back to the address's level, so a typo shows. `monitor` may read (GET
monitoring, `/metrics`, `show` commands, reading config files); only `admin` may
change anything. The settings are read from the holder on every request, so a
`reload` changes access at once.

With `http-auth-ldap NAME`, a request may also log in with HTTP Basic against that
directory (`mtaserver.auth.ldap`): the highest `http-auth-ldap-group GROUP-DN LEVEL`
the user belongs to is its level (if higher than its address's), a bad login is a
401 with `WWW-Authenticate`, a directory that does not answer is a 503 (`require`
awaits the login).

Errors on the management port carry PowerMTA's envelope and the SparkPost list
together, `{"status":"error","message":..,"errors":[{"message","description"}]}`,
so `mtactl` and generic clients both find what they look for (`handle_mgmt_errors`).
"""

from __future__ import annotations

import base64
import functools
import hmac
import inspect
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from twisted.logger import Logger
from twisted.web.iweb import IRequest

from mtaserver.config.model import GlobalSettings
from mtaserver.config.reload import ConfigHolder
from mtaserver.http.errors import APIError, json_response

log = Logger()
LEVELS = {"none": 0, "monitor": 1, "admin": 2}


def api_key_error(authorization: bytes | None, keys: Iterable[str]) -> APIError | None:
    """The Transmissions API's key check: None when `authorization` is one of `keys`,
    else the 403 to answer.

    Every key is compared, in constant time, so the time does not tell which one came
    close. The same check for the request head (guard), transmissions and suppression.
    """
    given = (authorization or b"").strip()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    if matched:
        return None
    return APIError(403, "Forbidden", "a valid api-key is required in Authorization")


def level_for(settings: GlobalSettings, client_ip: str, api_key: str | None) -> str:
    """The access level of a client; raises a 401 `APIError` for a wrong API key."""
    if api_key is not None:
        for key in settings.http_api_key:
            if hmac.compare_digest(key.encode(), api_key.encode()):
                return "admin"
        raise APIError(401, "Invalid API key", "the X-API-Key header matches no http-api-key")
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return "none"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    for rule in settings.http_access:
        if address.version == rule.network.version and address in rule.network:
            return rule.level
    return "none"


class Access:
    """Checks a request against the running config's access rules.

    With `ldap` (an `auth.ldap.LdapCheckers`) and `http-auth-ldap` set, an HTTP Basic
    login is checked against the directory (`login`) and its `http-auth-ldap-group`
    level is added; a login never lowers the address's level. A bad login is a 401
    with a Basic challenge, a directory that cannot answer a 503.
    """

    def __init__(self, holder: ConfigHolder, ldap: Any = None) -> None:
        self.holder = holder
        self.ldap = ldap

    def level(self, request: IRequest) -> str:
        header = request.getHeader(b"x-api-key")
        key = header.decode("utf-8", "replace") if header is not None else None
        peer = request.getClientAddress()
        host = getattr(peer, "host", "")
        level = level_for(self.holder.config.settings, host, key)
        login = getattr(request, "_mgmt_login_level", None)
        if login is not None and LEVELS.get(login, 0) > LEVELS[level]:
            level = login
        return level

    async def login(self, request: IRequest) -> str | None:
        """Check an HTTP Basic login against the directory; its level, or None without one."""
        settings = self.holder.config.settings
        header = request.getHeader(b"authorization")
        if self.ldap is None or not settings.http_auth_ldap or header is None:
            return None
        from mtaserver.auth.ldap import ldap_access_level

        scheme, _, token = header.partition(b" ")  # getHeader gives bytes
        try:
            user, sep, password = (
                base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
            )
        except (ValueError, UnicodeDecodeError):
            user, sep, password = "", "", ""
        if scheme.lower() != b"basic" or not sep or not user or not password:
            self._challenge(request)
        try:
            checker = self.ldap[settings.http_auth_ldap]
            level = await ldap_access_level(checker, user, password, settings.http_auth_ldap_group)
        except APIError:
            raise
        except Exception:
            log.failure("http-auth-ldap: the directory did not answer")
            raise APIError(503, "Directory unavailable", "try again later") from None
        if level is None:
            self._challenge(request)
        request._mgmt_login_level = level  # type: ignore[attr-defined]
        return level

    def _challenge(self, request: IRequest) -> None:
        request.setHeader(b"WWW-Authenticate", b'Basic realm="mtaserver"')
        raise APIError(401, "Invalid login", "the user name or password was not accepted")

    async def require(self, request: IRequest, needed: str) -> str:
        """The request's level, or a 403 `APIError` when it is below `needed`.

        A request that can change state (anything but GET/HEAD) coming from another
        site is refused whatever its level: an admin's browser visiting a hostile page
        must not post a form to `/command` or `/configFile` on the admin's behalf, since
        an address-based level travels with every request that browser sends (CSRF).
        """
        if request.method not in (b"GET", b"HEAD") and not same_origin(request):
            raise APIError(
                403, "Cross-site request refused", "the browser sent it from another site"
            )
        if getattr(request, "_mgmt_login_level", None) is None:
            await self.login(request)
        level = self.level(request)
        if LEVELS[level] < LEVELS[needed]:
            if level == "none":
                raise APIError(403, "Access denied", "no http-access rule grants this address")
            raise APIError(403, "Access denied", f"this needs {needed} access, you have {level}")
        return level


def same_origin(request: IRequest) -> bool:
    """False when the browser says the request comes from another site or origin.

    Browsers send `Sec-Fetch-Site` and, on POST, `Origin`; command-line clients such as
    mtactl send neither and are not browsers, so they pass.
    """
    fetch_site = request.getHeader(b"sec-fetch-site")
    if fetch_site is not None and fetch_site not in (b"same-origin", b"none"):
        return False
    origin = request.getHeader(b"origin")
    if origin is None:
        return True
    host = request.getHeader(b"host") or b""
    scheme = b"https" if request.isSecure() else b"http"
    return bool(origin == scheme + b"://" + host)


def error_body(error: APIError, data: Any = None) -> dict[str, Any]:
    """The management port's error envelope for an `APIError`."""
    detail = {"message": error.message}
    if error.description:
        detail["description"] = error.description
    message = f"{error.message}: {error.description}" if error.description else error.message
    body: dict[str, Any] = {"status": "error", "message": message, "errors": [detail]}
    if data is not None:
        body["data"] = data
    return body


def handle_mgmt_errors(handler: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """Like `errors.handle_errors`, with the management envelope (`error_body`)."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: IRequest, *args: Any, **kwargs: Any) -> Any:
        try:
            result = handler(self, request, *args, **kwargs)
            if hasattr(result, "__await__"):
                result = await result
            return result
        except APIError as error:
            return json_response(request, error_body(error), error.code)
        except Exception:
            log.failure("unhandled error in {path}", path=request.uri)
            internal = APIError(500, "Internal server error", "see the server log")
            return json_response(request, error_body(internal), 500)

    return wrapper


async def require_level(access: Access, request: IRequest, needed: str) -> str:
    """`access.require`, awaited when it is asynchronous (an LDAP login may be)."""
    level: Any = access.require(request, needed)
    if inspect.isawaitable(level):
        level = await level
    return str(level)


def response_format(request: IRequest, xml: bool = False) -> str:
    """The `format` field: `json` (structured data, the default) or `json-text` (mtactl's
    text); with `xml`, also `xml` and `xml-text` (the same in PowerMTA's XML envelope)."""
    fmt = form_field(request, "format") or "json"
    allowed = ("json", "json-text", "xml", "xml-text") if xml else ("json", "json-text")
    if fmt not in allowed:
        raise APIError(400, "Invalid format", f"format must be {', '.join(allowed)}")
    return fmt


def form_field(request: IRequest, name: str, title: str = "Invalid encoding") -> str | None:
    """A form field from the query string or the (urlencoded or multipart) body.

    A value that is not UTF-8 is a 400 with `title` (each API keeps its own error title).
    """
    values = request.args.get(name.encode())
    if not values:
        return None
    try:
        return bytes(values[0]).decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(400, title, f"{name} is not UTF-8") from None
