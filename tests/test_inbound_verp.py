"""VERP return paths in PowerMTA's `verp-default` format."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtaserver.inbound.verp import VerpAddress, decode_verp, encode_verp


def test_powermta_example() -> None:
    """The User's Guide example encodes and decodes both ways."""
    assert (
        encode_verp("jsmith@example.com", "jdoe@yahoo.com") == "jsmith-jdoe=yahoo.com@example.com"
    )
    assert decode_verp("<jsmith-jdoe=yahoo.com@example.com>") == VerpAddress(
        "jsmith@example.com", "jdoe@yahoo.com"
    )


@pytest.mark.parametrize(
    ("address", "prefixes", "expected"),
    [
        ("news-2024-a=b.example@x.example", ["news-2024"], ("news-2024@x.example", "a@b.example")),
        ("news-2024-a=b.example@x.example", [], ("news@x.example", "2024-a@b.example")),
        ("b-x=y=z.example@x.example", [], ("b@x.example", "x=y@z.example")),
    ],
)
def test_prefix_ambiguity(address: str, prefixes: list[str], expected: tuple[str, str]) -> None:
    """A known prefix resolves a dash in the prefix; the last `=` starts the domain."""
    assert decode_verp(address, prefixes) == VerpAddress(*expected)


@pytest.mark.parametrize(
    "address", ["", "<>", "plain@example.com", "a=b.example@x.example", "-x=y.z@q.r", "a-b=@x.y"]
)
def test_not_verp(address: str) -> None:
    """Addresses without a prefix, a dash or an encoded domain are not VERP."""
    assert decode_verp(address) is None


_atom = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._+", min_size=1, max_size=12)
_domain = st.lists(st.text(alphabet="abcdefghij0123456789", min_size=1, max_size=8), min_size=2,
                   max_size=4).map(".".join)  # fmt: skip


@given(prefix=_atom, sender_domain=_domain, rcpt_local=_atom, rcpt_domain=_domain)
def test_round_trip(prefix: str, sender_domain: str, rcpt_local: str, rcpt_domain: str) -> None:
    """Decoding what encode_verp built, with its prefix known, gives back both addresses."""
    orig, rcpt = f"{prefix}@{sender_domain}", f"{rcpt_local}@{rcpt_domain}"
    assert decode_verp(encode_verp(orig, rcpt), [prefix]) == VerpAddress(orig, rcpt)
