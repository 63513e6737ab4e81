"""Reload swaps the model atomically and keeps the running one when the file is bad."""

from __future__ import annotations

from pathlib import Path

from twisted.logger import globalLogPublisher

from mtaserver.config.model import Config
from mtaserver.config.reload import ConfigHolder


def test_reload_swaps_in_the_new_model(tmp_path: Path) -> None:
    """A good edit is live after reload() and listeners hear old and new."""
    path = tmp_path / "m.conf"
    path.write_text("<domain *>\n  max-smtp-out 3\n</domain>\n")
    holder = ConfigHolder.from_file(str(path))
    seen: list[tuple[Config, Config]] = []
    holder.on_reload(lambda old, new: seen.append((old, new)))
    old = holder.config
    path.write_text("<domain *>\n  max-smtp-out 9\n</domain>\n")
    assert holder.reload() == []
    assert holder.config.domain_settings("x.org").max_smtp_out == 9
    assert old.domain_settings("x.org").max_smtp_out == 3
    assert seen == [(old, holder.config)]


def test_failed_reload_keeps_the_running_model_and_logs_every_error(tmp_path: Path) -> None:
    """A bad edit leaves the old model in place and logs each FILE:LINE."""
    path = tmp_path / "m.conf"
    path.write_text("<domain *>\n  max-smtp-out 3\n</domain>\n")
    holder = ConfigHolder.from_file(str(path))
    before = holder.config
    path.write_text("<domain *>\n  max-smtp-out lots\n</domain>\nbogus 1\n")
    logged: list[str] = []

    def observer(event: dict[str, object]) -> None:
        if "problem" in event:
            logged.append(str(event["problem"]))

    globalLogPublisher.addObserver(observer)
    try:
        problems = holder.reload()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert problems == [
        f"{path}:2: max-smtp-out: expected a whole number, e.g. 10, not 'lots'",
        f"{path}:4: unknown directive 'bogus'",
    ]
    assert logged == problems
    assert holder.config is before


def test_reload_in_thread_parses_off_the_caller_and_swaps(tmp_path: Path) -> None:
    """reload_in_thread hands the parsing to run_in_thread; errors keep the old model."""
    from twisted.internet import defer

    path = tmp_path / "m.conf"
    path.write_text("<domain *>\n  max-smtp-out 3\n</domain>\n")
    holder = ConfigHolder.from_file(str(path))
    handed: list[object] = []

    def run_in_thread(work):  # type: ignore[no-untyped-def]
        handed.append(work)
        return defer.maybeDeferred(work)

    path.write_text("<domain *>\n  max-smtp-out 7\n</domain>\n")
    done = defer.ensureDeferred(holder.reload_in_thread(run_in_thread))
    assert done.result == [] and len(handed) == 1
    assert holder.config.domain_settings("x.org").max_smtp_out == 7
    before = holder.config
    path.write_text("bogus 1\n")
    failed = defer.ensureDeferred(holder.reload_in_thread(run_in_thread))
    assert failed.result == [f"{path}:1: unknown directive 'bogus'"]
    assert holder.config is before
