"""SHA-crypt (`$5$` and `$6$`, Ulrich Drepper's crypt(3) schemes) in pure Python.

Dovecot's `{SHA256-CRYPT}` and `{SHA512-CRYPT}` passwords are these strings. The
stdlib `crypt` module computes them too, but it is deprecated and gone in Python
3.13, and depends on the platform's libcrypt; the algorithm is short and fixed, so
it lives here. It is slow on purpose (5000 rounds by default): callers run it in a
thread, never on the reactor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ROUNDS_DEFAULT = 5000
_ROUNDS_MIN = 1000
_ROUNDS_MAX = 999_999_999

# The byte triples each variant encodes, in order (from the specification).
_ORDER_256 = [(i, (i + 10) % 30, (i + 20) % 30) for i in (0, 21, 12, 3, 24, 15, 6, 27, 18, 9)]


def _order_512() -> list[tuple[int, int, int]]:
    """(0,21,42), (22,43,1), (44,2,23), ... as glibc's sha512-crypt.c lists them."""
    triples = []
    a, b, c = 0, 21, 42
    for _ in range(21):
        triples.append((a, b, c))
        a, b, c = (b + 1) % 63, (c + 1) % 63, (a + 1) % 63
    return triples


_ORDER_512 = _order_512()


def _b64(b2: int, b1: int, b0: int, n: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    out = []
    for _ in range(n):
        out.append(_ALPHABET[w & 0x3F])
        w >>= 6
    return "".join(out)


def _repeat(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def sha_crypt(password: bytes, setting: str) -> str:
    """crypt(3) of `password` under `setting` (`$5$[rounds=N$]salt[$...]`); ValueError if bad."""
    if setting.startswith("$5$"):
        new: Callable[[], hashlib._Hash] = hashlib.sha256
        prefix, order, size = "$5$", _ORDER_256, 32
    elif setting.startswith("$6$"):
        new, prefix, order, size = hashlib.sha512, "$6$", _ORDER_512, 64
    else:
        raise ValueError("not a SHA-crypt string")
    rest = setting[3:]
    rounds, explicit = ROUNDS_DEFAULT, False
    if rest.startswith("rounds="):
        text, _, rest = rest[len("rounds=") :].partition("$")
        if not text.isdigit():
            raise ValueError("bad rounds= in SHA-crypt string")
        rounds, explicit = min(max(int(text), _ROUNDS_MIN), _ROUNDS_MAX), True
    salt = rest.split("$", 1)[0][:16].encode()
    digest = _digest(new, size, password, salt, rounds)
    encoded = "".join(_b64(digest[a], digest[b], digest[c], 4) for a, b, c in order)
    encoded += _b64(0, digest[31], digest[30], 3) if size == 32 else _b64(0, 0, digest[63], 2)
    head = f"{prefix}rounds={rounds}$" if explicit else prefix
    return f"{head}{salt.decode()}${encoded}"


def _digest(
    new: Callable[[], hashlib._Hash], size: int, password: bytes, salt: bytes, rounds: int
) -> bytes:
    def h(*parts: bytes) -> bytes:
        ctx = new()
        for part in parts:
            ctx.update(part)
        return ctx.digest()

    b = h(password, salt, password)
    a_ctx = new()
    a_ctx.update(password + salt + _repeat(b, len(password)))
    n = len(password)
    while n:
        a_ctx.update(b if n & 1 else password)
        n >>= 1
    c = a_ctx.digest()
    p_seq = _repeat(h(password * len(password)), len(password))
    s_seq = _repeat(h(salt * (16 + c[0])), len(salt))
    for i in range(rounds):
        ctx = new()
        ctx.update(p_seq if i & 1 else c)
        if i % 3:
            ctx.update(s_seq)
        if i % 7:
            ctx.update(p_seq)
        ctx.update(c if i & 1 else p_seq)
        c = ctx.digest()
    return c
