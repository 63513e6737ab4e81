"""CPU seconds per message: what mtaserver's processes spend on a fixed P1 run.

    .venv/bin/python bench/cpu.py [--messages 3000] [--size 5000] [--recipients 1]
                                  [--runs 3] [--cprofile FILE] [--compare REV,REV,...]

Wall-clock throughput on a shared machine says more about the neighbours than about
the code; the CPU time the server's own processes were charged does not. This starts
mtaserver (bench/peers.py's config) and an smtp-sink, warms it up with a few hundred
messages, then reads utime+stime of the server and every process under it from
/proc/PID/stat, runs `smtp-source -s 20 -m N -l SIZE`, waits until the sink has
counted every message and the server has gone idle (its acct writer has caught up),
and reads the counters again. The figure is (CPU after − CPU before) / N, the median
over `--runs` fresh servers.

`--cprofile FILE` runs the server under twistd's cProfile (`--profile FILE
--profiler cprofile --savestats`) for a pstats file of the same run (the profiler's
own overhead makes the CPU figure of that run meaningless).

`--compare A,B,...` unpacks `mtaserver/` of each git revision into a temp dir and
runs them interleaved (round after round, each revision once), so that a loaded
machine's drift hits every revision alike: "what each change bought".
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import peers

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """utime+stime of a live process (0 if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / TICKS


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of `root` and every live descendant (reception workers included)."""
    return sum(_cpu_seconds(pid) for pid in peers.descendants(root))


def wait_idle(pid: int, quiet: float = 1.0, timeout: float = 60) -> bool:
    """Wait until the process tree used < 5 % of a core over `quiet` seconds.

    False when it never did within `timeout` (something periodic keeps it busy: the
    CPU figure then includes that, which is what a scaling run should show).
    """
    deadline = time.monotonic() + timeout
    last = tree_cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = tree_cpu_seconds(pid)
        if now - last < 0.05 * quiet:
            return True
        last = now
    print(f"cpu: pid {pid} not idle after {timeout:.0f} s", flush=True)
    return False


def cpu_per_message(
    base: Path,
    messages: int,
    size: int = 5000,
    recipients: int = 1,
    sessions: int = 20,
    warmup: int = -1,
    extra_args: list[str] | None = None,
    pythonpath: str | None = None,
) -> dict[str, float]:
    """One fresh server: CPU seconds per message over a fixed P1-shaped run."""
    work = Path(tempfile.mkdtemp(prefix="cpu-", dir=base))
    sink = peers.Sink()
    server = peers.MtaServer(work, sink.port, twistd_args=extra_args or [], pythonpath=pythonpath)
    try:
        server.start()
        if warmup < 0:
            warmup = max(1, min(300, messages // 5))
        common = {"sessions": sessions, "size": size, "recipients": recipients}
        if warmup:
            peers.smtp_source(server.port, messages=warmup, **common)
            if not sink.wait_for(warmup, 120):
                raise RuntimeError("warm-up messages were not delivered")
        wait_idle(server.pid)
        before = tree_cpu_seconds(server.pid)
        started = time.monotonic()
        out = peers.smtp_source(server.port, messages=messages, **common, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(f"smtp-source failed: {out.stderr[-500:]!r}")
        if not sink.wait_for(warmup + messages, 1800):
            raise RuntimeError(f"sink counted {sink.messages}/{warmup + messages}")
        elapsed = time.monotonic() - started
        wait_idle(server.pid)
        used = tree_cpu_seconds(server.pid) - before
        return {
            "cpu_seconds": used,
            "cpu_ms_per_message": used / messages * 1000,
            "wall_seconds": elapsed,
        }
    finally:
        server.stop()
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)


def checkout(rev: str, into: Path) -> str:
    """`mtaserver/` as of git revision `rev`, unpacked under `into`; the PYTHONPATH for it."""
    target = into / rev.replace("/", "_")
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(peers.ROOT), "archive", rev, "mtaserver", "twisted"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return str(target)


def compare(base: Path, revs: list[str], args: argparse.Namespace) -> None:
    """Interleaved runs of several revisions: round after round, each revision once."""
    paths = {rev: checkout(rev, base) for rev in revs}
    samples: dict[str, list[float]] = {rev: [] for rev in revs}
    for n in range(args.runs):
        for rev in revs:
            run = cpu_per_message(
                base, args.messages, args.size, args.recipients, pythonpath=paths[rev]
            )
            samples[rev].append(run["cpu_ms_per_message"])
            print(
                f"round {n + 1}/{args.runs} {rev}: {run['cpu_ms_per_message']:.3f} ms", flush=True
            )
    load = Path("/proc/loadavg").read_text().split(" ")[0]
    print(f"{args.messages} x {args.size} B, {args.recipients} rcpt; load at end {load}")
    for rev in revs:
        print(f"{rev}: median {statistics.median(samples[rev]):.3f} ms CPU/message {samples[rev]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--recipients", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cprofile", help="write a pstats file of one profiled run here")
    parser.add_argument(
        "--workers", help="reception-workers: auto or N (default: the server's default)"
    )
    parser.add_argument(
        "--compare",
        help="comma-separated git revisions: interleaved runs of each (what a change bought)",
    )
    args = parser.parse_args(argv)
    peers.RECEPTION_WORKERS = args.workers
    with tempfile.TemporaryDirectory(prefix="mtaserver-cpu-") as tmp:
        base = Path(tmp)
        if args.compare:
            compare(base, args.compare.split(","), args)
            return 0
        if args.cprofile:
            extra = ["--profile", args.cprofile, "--profiler", "cprofile", "--savestats"]
            run = cpu_per_message(base, args.messages, args.size, args.recipients, extra_args=extra)
            print(f"profiled run (CPU inflated by the profiler): {run}; stats: {args.cprofile}")
            return 0
        samples = []
        for n in range(args.runs):
            run = cpu_per_message(base, args.messages, args.size, args.recipients)
            samples.append(run["cpu_ms_per_message"])
            print(
                f"run {n + 1}/{args.runs}: {run['cpu_ms_per_message']:.3f} ms CPU/message "
                f"({run['cpu_seconds']:.2f} s CPU, {run['wall_seconds']:.1f} s wall)",
                flush=True,
            )
        load = Path("/proc/loadavg").read_text().split(" ")[0]
        print(
            f"median {statistics.median(samples):.3f} ms CPU per message "
            f"({args.messages} x {args.size} B, {args.recipients} rcpt; load {load})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
