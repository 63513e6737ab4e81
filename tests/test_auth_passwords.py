"""Password schemes, SHA-crypt, the local user checker and the AUTH failure limiter."""

from __future__ import annotations

import pytest
from smtp_helpers import holder_from_text, run_now
from twisted.internet import task

from mtaserver.auth.limiter import AuthFailureLimiter
from mtaserver.auth.passwords import hash_password, verify_password
from mtaserver.auth.shacrypt import sha_crypt
from mtaserver.auth.users import LocalUserChecker

# The test vectors of Drepper's specification.
VECTORS = [
    ("$5$saltstring", "Hello world!", "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"),
    (
        "$5$rounds=10000$saltstringsaltstring",
        "Hello world!",
        "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA",
    ),
    (
        "$6$saltstring",
        "Hello world!",
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
    ),
    (
        "$6$rounds=1400$anotherlongsaltstring",
        "a very much longer text to encrypt.  This one even stretches over morethan one line.",
        "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1",
    ),
    (
        "$5$rounds=10$roundstoolow",
        "the minimum number is still observed",
        "$5$rounds=1000$roundstoolow$yfvwcWrQ8l/K0DAWyuPMDNHpIVlTQebY9l/gL972bIC",
    ),
]


@pytest.mark.parametrize(("setting", "password", "expected"), VECTORS)
def test_sha_crypt_vectors(setting: str, password: str, expected: str) -> None:
    """sha_crypt reproduces the specification's test vectors."""
    assert sha_crypt(password.encode(), setting) == expected


def test_sha_crypt_matches_libcrypt() -> None:
    """Where the stdlib crypt module exists, both give the same strings."""
    crypt = pytest.importorskip("crypt")
    for setting in ("$6$abcdefgh", "$5$rounds=2000$xyz", "$6$rounds=5000$0123456789abcdef"):
        for password in ("", "pässword", "x" * 80):
            assert sha_crypt(password.encode(), setting) == crypt.crypt(password, setting)


@pytest.mark.parametrize(
    "scheme", ["PLAIN", "SHA256", "SSHA256", "SSHA512", "SHA256-CRYPT", "SHA512-CRYPT"]
)
def test_every_scheme_accepts_right_and_refuses_wrong(scheme: str) -> None:
    """Each Dovecot scheme verifies its own hash and refuses a wrong password."""
    stored = hash_password("s3cret ü", scheme)
    assert stored.startswith("{" + scheme + "}")
    assert verify_password(stored, "s3cret ü")
    assert not verify_password(stored, "s3cret u")
    assert not verify_password(stored, "")


def test_dovecot_notation_examples() -> None:
    """Hashes as doveadm writes them verify (base64 and hex SHA256, bare plain)."""
    assert verify_password("{SHA256}K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=", "secret")
    assert verify_password(
        "{SHA256}2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b", "secret"
    )
    assert verify_password("plainpassword", "plainpassword")
    assert not verify_password("{SHA256}not base64!", "secret")
    assert not verify_password("{SHA512-CRYPT}$5$wrongprefix$x", "secret")
    assert not verify_password("{UNKNOWN}secret", "secret")


def _holder() -> object:
    return holder_from_text(
        "host-name mx.test\n"
        "<smtp-user alice>\n  password " + hash_password("wonderland", "SHA512-CRYPT") + "\n"
        "</smtp-user>\n"
        "<smtp-user bob>\n  password builder\n</smtp-user>\n"
    )


def test_local_checker_runs_in_thread_and_checks() -> None:
    """LocalUserChecker hands verification to run_in_thread and answers per user."""
    calls: list[object] = []

    def run(work: object) -> object:
        calls.append(work)
        return run_now(work)

    checker = LocalUserChecker(_holder(), run)  # type: ignore[arg-type]
    results: list[bool] = []
    for user, password in [
        ("alice", "wonderland"),
        ("alice", "x"),
        ("bob", "builder"),
        ("carol", "builder"),
    ]:
        checker.check(user, password).addCallback(results.append)
    assert results == [True, False, True, False]
    assert len(calls) == 4


def test_limiter_counts_per_ip_within_a_minute() -> None:
    """Failures count per IP and expire after sixty seconds."""
    clock = task.Clock()
    limiter = AuthFailureLimiter(clock.seconds)
    assert limiter.record("10.0.0.1") == 1
    clock.advance(30)
    assert limiter.record("10.0.0.1") == 2
    assert limiter.record("10.0.0.2") == 1
    assert limiter.blocked("10.0.0.1", 2)
    assert not limiter.blocked("10.0.0.2", 2)
    clock.advance(31)
    assert limiter.failures("10.0.0.1") == 1
    clock.advance(30)
    assert limiter.failures("10.0.0.1") == 0


def test_limiter_memory_is_bounded() -> None:
    """The limiter tracks at most max_clients addresses."""
    limiter = AuthFailureLimiter(lambda: 0.0, max_clients=3)
    for i in range(10):
        limiter.record(f"10.0.0.{i}")
    assert len(limiter._failures) == 3
