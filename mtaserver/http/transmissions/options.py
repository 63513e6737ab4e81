"""A transmission's `options` object: what each SparkPost option does here, or a 422.

Every option SparkPost documents is either honoured or refused by name, never
ignored (`null` and the value that asks for nothing, such as `open_tracking: false`,
are accepted):

* `start_time`: ISO 8601 with an offset (`2026-12-01T08:00:00+01:00`, `...Z`) or
  `now`. A time in the past sends at once; a later one is kept with the message in
  the spool and the scheduler holds its recipients until then (`bounce-after`
  counts from it); more than `MAX_START_DELAY` ahead (SparkPost's three days) is a
  422;
* `ip_pool`: a `<virtual-mta-pool>` name; the messages use that pool (over any
  `X-Virtual-MTA` and the source's `default-virtual-mta`); an unknown pool is a 422
  (checked by the API against the running config);
* `transactional`: true makes only suppression entries of type `transactional`
  refuse a recipient (SparkPost's rule); false or absent: every entry does;
* `skip_suppression`: true skips the suppression list for this transmission;
* `perform_substitutions`: false sends the content as written;
* `smtputf8`: allows non-ASCII addresses (SMTPUTF8 is then used only for the
  messages that have one);
* `open_tracking`, `click_tracking`, `initial_open`, `inline_css`, `sandbox`: only
  false is accepted (422 otherwise: this server does no tracking, no CSS inlining
  and has no sandbox domain).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from mtaserver.http.errors import APIError
from mtaserver.http.templates.model import check_unknown, unsupported

#: SparkPost schedules up to three days ahead; a later start_time is a 422.
MAX_START_DELAY = 3 * 86400.0
MAX_POOL_NAME = 256

_FLAGS = ("transactional", "skip_suppression", "perform_substitutions", "smtputf8")
_REFUSED_WHEN_TRUE = {
    "open_tracking": "this server does no engagement tracking",
    "click_tracking": "this server does no engagement tracking",
    "initial_open": "this server does no engagement tracking",
    "inline_css": "this server does not inline CSS",
    "sandbox": "this server has no sandbox domain",
}
KNOWN = {"start_time", "ip_pool", *_FLAGS, *_REFUSED_WHEN_TRUE}


def bad_request(description: str) -> APIError:
    return APIError(400, "Invalid request", description)


@attrs.frozen
class Options:
    """The options of one transmission, checked."""

    start_time: float | None = None  # epoch seconds; None: at once
    ip_pool: str | None = None
    transactional: bool | None = None  # None: not given (a template's own may apply)
    skip_suppression: bool = False
    perform_substitutions: bool = True
    smtputf8: bool = False


def parse_options(value: Any, now: float) -> Options:
    """The checked `options` object (missing or null: defaults), or APIError."""
    if value is None:
        return Options()
    if not isinstance(value, Mapping):
        raise bad_request("options must be an object")
    check_unknown(value, KNOWN, "options.")
    present = {k: v for k, v in value.items() if v is not None}
    flags: dict[str, bool] = {}
    for name in (*_FLAGS, *_REFUSED_WHEN_TRUE):
        if name in present:
            if not isinstance(present[name], bool):
                raise bad_request(f"options.{name} must be true or false")
            flags[name] = present[name]
    for name, why in _REFUSED_WHEN_TRUE.items():
        if flags.pop(name, False):
            raise unsupported(f"options.{name}", why)
    return Options(
        start_time=parse_start_time(present.get("start_time"), now),
        ip_pool=_pool(present.get("ip_pool")),
        transactional=flags.get("transactional"),
        skip_suppression=flags.get("skip_suppression", False),
        perform_substitutions=flags.get("perform_substitutions", True),
        smtputf8=flags.get("smtputf8", False),
    )


def parse_start_time(value: Any, now: float) -> float | None:
    """Epoch seconds of a future `start_time`; None for none, `now` or a past time."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request("options.start_time must be a string")
    text = value.strip()
    if text.lower() == "now":
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise bad_request(
            "options.start_time must be ISO 8601 with an offset, "
            "such as 2026-12-01T08:00:00+01:00, or now"
        ) from None
    if when.tzinfo is None:
        raise bad_request("options.start_time needs a UTC offset (+HH:MM or Z)")
    at = when.timestamp()
    if at <= now:
        return None  # SparkPost: a time in the past sends at once
    if at - now > MAX_START_DELAY:
        raise APIError(
            422,
            "Invalid start_time",
            f"options.start_time may be at most {MAX_START_DELAY / 86400:.0f} days ahead",
        )
    return at


def _pool(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise bad_request("options.ip_pool must be a non-empty string")
    if len(value) > MAX_POOL_NAME or not value.isprintable():
        raise bad_request(f"options.ip_pool must be printable, at most {MAX_POOL_NAME} chars")
    return value.strip()
