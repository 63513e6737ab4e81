"""The bulk recipient shape takes a short path through parse_transmission; same results."""

from __future__ import annotations

from typing import Any

import pytest

from mtaserver.http.errors import APIError
from mtaserver.http.transmissions.parse import parse_transmission
from mtaserver.message.addresses import AddressError, parse_mailbox


def _body(recipients: list[Any], **extra: Any) -> dict[str, Any]:
    return {
        "return_path": "bounce@source.test",
        "recipients": recipients,
        "content": {"email_rfc822": "From: a@source.test\r\nSubject: s\r\n\r\nhi\r\n"},
        **extra,
    }


def test_address_shapes_give_the_same_recipient() -> None:
    """{"address": s}, a bare string and {"address": {"email": s}} parse alike."""
    shapes = ["u@x.test", {"address": "u@x.test"}, {"address": {"email": "u@x.test"}}]
    parsed = [parse_transmission(_body([shape])).recipients[0] for shape in shapes]
    assert parsed[0] == parsed[1] == parsed[2]
    assert parsed[0].address == "u@x.test"
    assert parsed[0].return_path == "bounce@source.test"


def test_substitution_data_merges_per_recipient_only() -> None:
    """A recipient's own substitution_data overrides the message's; the others keep it."""
    body = _body(
        [{"address": "a@x.test"}, {"address": "b@x.test", "substitution_data": {"k": "own"}}],
        substitution_data={"k": "message", "m": 1},
    )
    a, b = parse_transmission(body).recipients
    assert dict(a.substitution_data) == {"k": "message", "m": 1}
    assert dict(b.substitution_data) == {"k": "own", "m": 1}


@pytest.mark.parametrize(
    ("recipient", "text"),
    [
        ({"address": "no-at-sign"}, "recipients[1].address is not a valid address"),
        ({"address": "u@bad domain.test"}, "recipients[1].address is not a valid address"),
        ({"address": "u@" + "a" * 300 + ".test"}, "recipients[1].address is not a valid"),
    ],
)
def test_bad_addresses_in_the_bulk_shape_are_rejected_by_index(
    recipient: dict[str, str], text: str
) -> None:
    """A bad address in the short path goes to rcpt_to_errors naming its index."""
    transmission = parse_transmission(_body([{"address": "ok@x.test"}, recipient]))
    assert [r.address for r in transmission.recipients] == ["ok@x.test"]
    assert text in transmission.rejected[0]["description"]


def test_unknown_field_beside_the_address_is_still_refused() -> None:
    """An address plus an unknown field takes the full path: 422 naming the field."""
    with pytest.raises(APIError) as caught:
        parse_transmission(_body([{"address": "u@x.test", "bogus": 1}]))
    assert caught.value.code == 422
    assert "recipients[0].bogus" in (caught.value.description or "")


def test_domain_check_cache_keeps_answers() -> None:
    """Cached domain checks answer as before: literals, long names and routing marks."""
    assert parse_mailbox("u@[127.0.0.1]").address == "u@[127.0.0.1]"
    assert parse_mailbox("a%b@x.test").routed
    assert parse_mailbox("a!b@x.test").routed
    assert not parse_mailbox("ab@x.test").routed
    for bad in ("u@[1.2.3]", "u@" + "a" * 64 + ".test", "u@" + "a." * 200 + "test"):
        with pytest.raises(AddressError):
            parse_mailbox(bad)
        with pytest.raises(AddressError):  # the second answer comes from the cache
            parse_mailbox(bad)
