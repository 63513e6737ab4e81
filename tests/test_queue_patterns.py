"""Pattern-list actions, backoff mode and the connection limit, as pure tables."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from mtaserver.config.load import load_config
from mtaserver.config.model import DomainSettings
from mtaserver.config.values import Rate
from mtaserver.queue.model import Queue
from mtaserver.queue.patterns import apply_actions, effective_settings, leave_backoff_if_due
from mtaserver.queue.slots import ConnectionSlots


@pytest.mark.parametrize(
    ("mode", "actions", "queue_action", "new_mode", "since"),
    [
        ("normal", (), "", "normal", 0.0),
        ("normal", ("mode=backoff",), "", "backoff", 50.0),
        ("backoff", ("mode=backoff",), "", "backoff", 50.0),
        ("backoff", ("mode=normal",), "", "normal", 10.0),
        ("normal", ("defer-queue",), "defer-queue", "normal", 0.0),
        ("normal", ("defer-queue", "bounce-queue"), "bounce-queue", "normal", 0.0),
        ("normal", ("mode=backoff", "defer-queue"), "defer-queue", "backoff", 50.0),
        ("normal", ("bounce-rcpt",), "", "normal", 0.0),
    ],
)
def test_apply_actions(
    mode: str, actions: tuple[str, ...], queue_action: str, new_mode: str, since: float
) -> None:
    """Mode actions switch the queue's mode; a queue action is returned, bounce first."""
    queue = Queue("a/v", "a", "v", mode=mode, backoff_since=0.0 if mode == "normal" else 10.0)
    assert apply_actions(queue, actions, now=50.0) == queue_action
    assert (queue.mode, queue.backoff_since) == (new_mode, since)


@pytest.mark.parametrize(
    ("since", "now", "mode"),
    [(0.0, 3599.0, "backoff"), (0.0, 3600.0, "normal"), (100.0, 3650.0, "backoff")],
)
def test_backoff_ends_after_backoff_to_normal_after(since: float, now: float, mode: str) -> None:
    """A queue leaves backoff by itself once backoff-to-normal-after (1h) has passed."""
    queue = Queue("a/v", "a", "v", mode="backoff", backoff_since=since)
    leave_backoff_if_due(queue, DomainSettings(), now)
    assert queue.mode == mode


def test_effective_settings_in_backoff() -> None:
    """Backoff uses backoff-max-msg-rate (else max-msg-rate) and backoff-retry-after."""
    rate, slow = Rate(100, 3600.0), Rate(10, 3600.0)
    settings = DomainSettings(max_msg_rate=rate, backoff_max_msg_rate=slow)
    normal, backoff = Queue("a/v", "a", "v"), Queue("a/v", "a", "v", mode="backoff")
    assert effective_settings(normal, settings) is settings
    assert effective_settings(backoff, settings).max_msg_rate == slow
    assert effective_settings(backoff, settings).retry_after == settings.backoff_retry_after
    unset = attrs.evolve(settings, backoff_max_msg_rate=None)
    assert effective_settings(backoff, unset).max_msg_rate == rate


@pytest.mark.parametrize(
    ("domain_max", "vmta_conf", "mode", "limit"),
    [
        (20, "", "normal", 20),
        (20, "max-smtp-out 5", "normal", 5),
        (3, "max-smtp-out 5", "normal", 3),
        (20, "max-smtp-out 5", "backoff", 1),
        (0, "", "normal", 1),
    ],
)
def test_session_limit(
    tmp_path: Path, domain_max: int, vmta_conf: str, mode: str, limit: int
) -> None:
    """max-smtp-out of the domain and the vmta, the lower wins; one session in backoff."""
    conf = tmp_path / "m.conf"
    conf.write_text(f"<virtual-mta v>\n{vmta_conf}\n</virtual-mta>\n")
    config = load_config(str(conf))
    queue = Queue("a/v", "a", "v", mode=mode)
    settings = DomainSettings(max_smtp_out=domain_max)
    assert ConnectionSlots().limit(queue, settings, config) == limit
