"""The fixtures every kind of test shares, defined once.

* `run_now`: thread work run inline (`mtaserver.spool.testing.run_now`), for tests
  without a reactor;
* `run_in_thread`: the reactor's thread pool, as the server runs blocking work
  (`reactor_thread.run_in_thread`, for code on the reactor thread of `reactor_thread`);
* `ca`: one trustme certificate authority for the session (server certificates for
  STARTTLS, HTTPS and LDAP are issued from it; a test that needs an *untrusted* CA
  makes its own);
* `acct_rows`: reads a CSV acct file (`server_process.read_acct`);
* `wait_until`: polls a condition up to a generous deadline (never a wall-clock window);
* `free_port`: a loopback port for a config handed to a subprocess. Servers inside the
  test process bind port 0 and read the port back instead;
* `receiver`: an aiosmtpd receiver on loopback (`mx_receiver.Receiver`) for one test,
  stopped after it (a module that shares one across its tests defines its own).

It also loads a Hypothesis profile without the per-example deadline.

Module-level helpers import the plain functions from `reactor_thread` and
`server_process`; test functions take the fixtures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import server_process
import trustme
from hypothesis import settings
from mx_receiver import Receiver

# Hypothesis's per-example deadline (200 ms) is a wall-clock window: under load (`-n 2`
# on a shared machine) a round trip through the spool can take longer and the test
# fails as "unreliable". Property tests assert properties, never timing.
settings.register_profile("mtaserver", deadline=None)
settings.load_profile("mtaserver")


@pytest.fixture
def run_now() -> Callable[[Callable[[], Any]], Any]:
    from mtaserver.spool.testing import run_now

    return run_now


@pytest.fixture
def run_in_thread() -> Callable[[Callable[[], Any]], Any]:
    # imported here: importing reactor_thread installs the default reactor
    import reactor_thread

    reactor_thread.ensure_reactor()
    return reactor_thread.run_in_thread


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def acct_rows() -> Callable[..., list[dict[str, str]]]:
    return server_process.read_acct


@pytest.fixture
def wait_until() -> Callable[..., bool]:
    return server_process.wait_until


@pytest.fixture
def free_port() -> Callable[[], int]:
    return server_process.free_port


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running
