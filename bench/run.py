"""`make bench`: mtaserver against Postfix on loopback, reported as medians and ratios.

    .venv/bin/python bench/run.py [--only p1,cpu,p3,p6,p2,p4,p5,scaling,p7] [--runs 3]
                                  [--workers N] [--json FILE]

P1  end-to-end relay: smtp-source -> MTA -> smtp-sink; seconds until the sink has
    counted every message. Postfix and mtaserver alternate within each repetition,
    each on a fresh queue/spool and a fresh sink. Scenarios: 5 KB, 50 KB, and
    messages with 1,000 recipients.
cpu CPU seconds per message of mtaserver's processes for the three P1 shapes
    (bench/cpu.py: utime+stime from /proc, independent of the machine's load).
P3  P1 5 KB through mtaserver with and without an accounting webhook: the slowdown.
    (Records/s shipped by the batcher alone: bench/webhook_bench.py.)
P6  latency of probe sessions' transactions (MAIL..250 after DATA, and "."..250),
    p50/p99, while P1's 5 KB load runs; Postfix and mtaserver.
P2  Transmissions API: recipients/s accepted durably for 1,000-recipient
    transmissions (4 clients) and single-recipient transmissions/s (20 clients).
P4  resident memory per queued recipient with 1,100,000 recipients queued (1,000 x
    1,000 to one down destination + 100,000 single-recipient messages across 1,000
    down domains).
P5  restart with P4's spool (SIGTERM, then SIGKILL): seconds to SMTP accepting and
    to delivering a new message again.
scaling  P1 5 KB to a live sink with P4's queue held vs. an empty queue: wall time
    and CPU per message.
P7  suppression list at 1,000,000 entries: lookups/s (hits and misses, two scopes per
    lookup as RCPT checks them) and resident bytes per entry after opening, in a fresh
    process (bench/suppression_bench.py, which also has bulk-add and open figures).
profile  (only when asked) py-spy, or cProfile without it, of mtaserver under P1 5 KB.

Each part prints how long it took. Every process runs on 127.0.0.1 and is stopped by
pid in `finally` blocks (and an atexit hook, also on SIGTERM); every wait has a
timeout. Results go to stdout and, with --json, to a file (not committed:
docs/benchmarks.rst carries the figures).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import peers
from latency import Probe, percentile

SCENARIOS = {
    # name: (smtp-source arguments, default message count)
    "5k": ({"sessions": 20, "size": 5000, "recipients": 1}, 5000),
    "50k": ({"sessions": 20, "size": 50000, "recipients": 1}, 1000),
    "1000rcpt": ({"sessions": 20, "size": 5000, "recipients": 1000}, 50),
}


def machine() -> dict[str, str]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    postfix = subprocess.run(
        [peers.tool("postconf"), "-dh", "mail_version"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": f"{int(mem.group(1)) // 1024} MiB" if mem else "unknown",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postfix": postfix,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split(" ")[0],
    }


def fresh_dir(base: Path, name: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))
    return path


# -- P1 -------------------------------------------------------------------------


def _relay_once(
    kind: str,
    base: Path,
    scenario: str,
    messages: int,
    on_server: Callable[[int, int], None] | None = None,
    on_source_done: Callable[[], int] | None = None,
    webhook_url: str | None = None,
) -> dict[str, float]:
    """One timed relay run on a fresh MTA and sink; returns seconds and rates."""
    args, _ = SCENARIOS[scenario]
    work = fresh_dir(base, f"{kind}-{scenario}")
    sink = peers.Sink()
    server: peers.Postfix | peers.MtaServer
    if kind == "postfix":
        server = peers.Postfix(work, sink.port)
        server.start()
        port, pid = server.port, 0
    else:
        server = peers.MtaServer(work, sink.port, webhook_url=webhook_url)
        server.start()
        port, pid = server.port, server.pid
    timeout = max(180.0, messages * args["recipients"] / 50)
    try:
        if on_server is not None:
            on_server(port, pid)
        started = time.monotonic()
        source = subprocess.Popen(
            peers.source_command(port, messages=messages, **args),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            if on_source_done is None:
                delivered = sink.wait_for(messages, timeout)
                elapsed = time.monotonic() - started
                _, err = source.communicate(timeout=60)
            else:
                _, err = source.communicate(timeout=timeout)
                extra = on_source_done()  # messages sent by someone else (the probe)
                delivered = sink.wait_for(messages + extra, timeout)
                elapsed = time.monotonic() - started
        finally:
            if source.poll() is None:
                source.kill()
                source.wait()
        if source.returncode != 0:
            raise RuntimeError(f"smtp-source failed ({source.returncode}): {err[-500:]!r}")
        if not delivered:
            raise RuntimeError(f"{kind}: sink counted {sink.messages}/{messages} in {timeout}s")
        return {
            "seconds": elapsed,
            "msgs_per_s": messages / elapsed,
            "rcpts_per_s": messages * args["recipients"] / elapsed,
        }
    finally:
        server.stop()
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)
        os.sync()  # the next run starts with nothing of this one left to write back


def p1(base: Path, counts: dict[str, int], runs: int, results: dict[str, object]) -> None:
    out: dict[str, object] = {}
    for scenario, messages in counts.items():
        if messages <= 0:
            continue
        args, _ = SCENARIOS[scenario]
        samples: dict[str, list[dict[str, float]]] = {"postfix": [], "mtaserver": []}
        for run in range(runs):
            # Who goes first alternates: a run right after the other MTA's was measured
            # slower (its exit and write-back overlap), whichever MTA it was.
            order = ("postfix", "mtaserver") if run % 2 == 0 else ("mtaserver", "postfix")
            for kind in order:
                sample = _relay_once(kind, base, scenario, messages)
                samples[kind].append(sample)
                print(
                    f"P1 {scenario} run {run + 1}/{runs} {kind}: {sample['seconds']:.2f} s, "
                    f"{sample['msgs_per_s']:.0f} msg/s",
                    flush=True,
                )
        med = {k: statistics.median(s["seconds"] for s in v) for k, v in samples.items()}
        out[scenario] = {
            "command": " ".join(peers.source_command(0, messages=messages, **args)).replace(
                "127.0.0.1:0", "127.0.0.1:PORT"
            ),
            "messages": messages,
            "recipients_per_message": args["recipients"],
            "samples": samples,
            "median_seconds": med,
            "median_msgs_per_s": {k: messages / v for k, v in med.items()},
            "ratio_mtaserver_over_postfix": med["postfix"] / med["mtaserver"],
        }
        print(
            f"P1 {scenario}: median postfix {med['postfix']:.2f} s, mtaserver "
            f"{med['mtaserver']:.2f} s, ratio {med['postfix'] / med['mtaserver']:.2f}",
            flush=True,
        )
    results["p1"] = out


# -- P3 -------------------------------------------------------------------------


def p3(base: Path, messages: int, runs: int, results: dict[str, object]) -> None:
    """P1 5 KB through mtaserver with and without an accounting webhook, alternating.

    With the webhook the acct file records r,d,b (three times the records of the
    plain run's d,b) and ships them in 1 s batches to a local endpoint.
    """
    receiver = peers.WebhookReceiver()
    samples: dict[str, list[float]] = {"plain": [], "webhook": []}
    try:
        for run in range(runs):
            pair = [("plain", None), ("webhook", receiver.url)]
            for kind, url in pair if run % 2 == 0 else reversed(pair):  # as P1: order alternates
                sample = _relay_once("mtaserver", base, "5k", messages, webhook_url=url)
                samples[kind].append(sample["seconds"])
                print(f"P3 run {run + 1}/{runs} {kind}: {sample['seconds']:.2f} s", flush=True)
    finally:
        receiver.stop()
    med = {k: statistics.median(v) for k, v in samples.items()}
    slowdown = med["webhook"] / med["plain"] - 1
    results["p3"] = {
        "messages": messages,
        "samples": samples,
        "median_seconds": med,
        "slowdown": slowdown,
    }
    print(
        f"P3: median plain {med['plain']:.2f} s, with webhook {med['webhook']:.2f} s, "
        f"slowdown {slowdown:.1%}",
        flush=True,
    )


# -- P6 -------------------------------------------------------------------------


def p6(base: Path, messages: int, results: dict[str, object]) -> None:
    """p50/p99 of two probe sessions' transactions (MAIL..250 after DATA) under P1 5 KB."""
    out: dict[str, object] = {}
    for kind in ("postfix", "mtaserver"):
        probe: list[Probe] = []
        samples: list[float] = []

        def start_probe(port: int, _pid: int) -> None:
            probe.append(Probe(port, connections=2).start())  # noqa: B023 - used at once

        def stop_probe() -> int:
            samples.extend(probe[0].stop())  # noqa: B023 - used at once
            return len(samples)  # noqa: B023 - used at once

        try:
            run = _relay_once(
                kind, base, "5k", messages, on_server=start_probe, on_source_done=stop_probe
            )
        finally:
            if probe and not samples:
                probe[0].stop()
        whole = probe[0].transactions if probe else []
        out[kind] = {
            "samples": len(samples),
            "errors": probe[0].errors if probe else 0,
            "mail_to_250_p50_ms": round(percentile(whole, 50) * 1000, 1),
            "mail_to_250_p99_ms": round(percentile(whole, 99) * 1000, 1),
            "dot_to_250_p50_ms": round(percentile(samples, 50) * 1000, 1),
            "dot_to_250_p99_ms": round(percentile(samples, 99) * 1000, 1),
            "max_ms": round(whole[-1] * 1000, 1) if whole else float("nan"),
            "load_msgs_per_s": round(run["msgs_per_s"]),
        }
        print(f"P6 {kind}: {out[kind]}", flush=True)
    results["p6"] = out


# -- P4 and P5 ------------------------------------------------------------------


def _settled_rss(server: peers.MtaServer, seconds: float = 3.0, timeout: float = 120) -> int:
    """RSS once it has not grown for `seconds` (queueing and first attempts done)."""
    deadline = time.monotonic() + timeout
    last, since = server.rss_bytes(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = server.rss_bytes()
        if now > last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            break
    return last


def _acct_lines(server: peers.MtaServer) -> int:
    acct = server.workdir / "acct.csv"
    return sum(1 for _ in acct.open()) if acct.exists() else 0


SINK_DOMAIN = """
<domain sink.test>
    smtp-hosts [127.0.0.1]:{port}
    max-smtp-out 20
    max-msg-per-connection 1000
    max-rcpt-per-transaction 1000
    use-starttls no
</domain>
"""


def _run_sources(commands: list[list[str]], parallel: int, timeout: float) -> None:
    """Run smtp-source commands, `parallel` at a time; any failure stops the benchmark."""
    waiting = list(reversed(commands))
    running: list[subprocess.Popen[bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while waiting or running:
            while waiting and len(running) < parallel:
                running.append(
                    subprocess.Popen(
                        waiting.pop(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                    )
                )
            for proc in list(running):
                if proc.poll() is not None:
                    running.remove(proc)
                    if proc.returncode != 0:
                        err = proc.stderr.read() if proc.stderr else b""
                        raise RuntimeError(f"smtp-source failed: {err[-500:]!r}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"loading the queue took over {timeout:.0f} s")
            time.sleep(0.05)
    finally:
        for proc in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


class LoadedQueue:
    """mtaserver with P4's queue: bulk messages and single-recipient ones, all undeliverable.

    `<domain *>` points at a loopback port nobody listens on (`retry-after 1h`), so every
    queued recipient stays queued; `<domain sink.test>` goes to a live smtp-sink, for
    the P5 "delivering again" check and the scaling runs.
    """

    def __init__(self, base: Path, bulk: tuple[int, int], single: int, domains: int) -> None:
        self.work = fresh_dir(base, "p4")
        self.sink = peers.Sink()
        self.sent_to_sink = 0
        self.bulk, self.single, self.domains = bulk, single, domains
        self.queued = bulk[0] * bulk[1] + single
        self.server = peers.MtaServer(
            self.work,
            peers.free_port(),  # nobody listens: every connection is refused
            retry_after="1h",
            extra_config=SINK_DOMAIN.format(port=self.sink.port),
        )

    def load(self) -> dict[str, object]:
        server = self.server
        server.start()
        time.sleep(1)
        baseline = _settled_rss(server, 1.0)
        started = time.monotonic()
        messages, rcpts = self.bulk
        bulk_cmd = peers.source_command(
            server.port, sessions=20, messages=messages, size=5000, recipients=rcpts
        )
        bulk_cmd[bulk_cmd.index("rcpt@sink.test")] = "rcpt@bulk.down.test"
        commands = [bulk_cmd] if messages else []
        per_domain, extra = divmod(self.single, self.domains) if self.domains else (0, 0)
        for n in range(self.domains if self.single else 0):
            count = per_domain + (1 if n < extra else 0)
            if not count:
                continue
            cmd = peers.source_command(
                server.port, sessions=min(5, count), messages=count, size=5000
            )
            cmd[cmd.index("rcpt@sink.test")] = f"rcpt@d{n}.down.test"
            commands.append(cmd)
        _run_sources(commands, parallel=4, timeout=7200)
        inject = time.monotonic() - started
        loaded = _settled_rss(server, 5.0, timeout=600)
        return {
            "what": f"{messages} messages x {rcpts} recipients to bulk.down.test (smtp-source "
            f"-s 20 -r {rcpts}), then {self.single} single-recipient messages across "
            f"{self.domains} domains dN.down.test (smtp-source -s 5, 4 at a time); "
            "every destination refuses connections (retry-after 1h)",
            "queued_recipients": self.queued,
            "rss_before_mib": round(baseline / 2**20, 1),
            "rss_after_mib": round(loaded / 2**20, 1),
            "bytes_per_recipient": round((loaded - baseline) / self.queued, 1),
            "inject_seconds": round(inject, 1),
            "inject_rcpts_per_s": round(self.queued / inject),
            "spool_mib": round(_du(server.spool) / 2**20, 1),
        }

    def restart(self, how: str) -> dict[str, float]:
        """Stop (SIGTERM or SIGKILL), start again; seconds to SMTP, to recovered, to a delivery."""
        server = self.server
        if how == "sigterm":
            server.stop()
        else:
            server.kill9()
        server.clear_log()
        began = time.monotonic()
        server.start(timeout=600)
        listening = time.monotonic() - began
        probe = peers.smtp_source(server.port, sessions=1, messages=1, size=5000, timeout=600)
        if probe.returncode != 0:
            raise RuntimeError(f"probe message refused after restart: {probe.stderr[-300:]!r}")
        self.sent_to_sink += 1
        if not self.sink.wait_for(self.sent_to_sink, 600):
            raise RuntimeError("no delivery within 600 s of the restart")
        delivering = time.monotonic() - began
        deadline = began + 600
        while "spool recovered" not in server.read_log():
            if time.monotonic() > deadline:
                raise RuntimeError("no 'spool recovered' within 600 s")
            time.sleep(0.2)
        match = re.search(r"spool recovered: (\d+) messages", server.read_log())
        return {
            "smtp_accepting_s": round(listening, 2),
            "delivering_s": round(delivering, 2),
            "messages_recovered": int(match.group(1)) if match else -1,
            "rss_mib": round(_settled_rss(server, 2.0) / 2**20, 1),
        }

    def p1(self, messages: int) -> dict[str, float]:
        """P1 5 KB to the sink while the queue holds its load: wall and CPU per message."""
        import cpu

        server = self.server
        cpu.wait_idle(server.pid)
        before = cpu.tree_cpu_seconds(server.pid)
        started = time.monotonic()
        out = peers.smtp_source(server.port, sessions=20, messages=messages, size=5000)
        if out.returncode != 0:
            raise RuntimeError(f"smtp-source failed: {out.stderr[-500:]!r}")
        self.sent_to_sink += messages
        if not self.sink.wait_for(self.sent_to_sink, 1800):
            raise RuntimeError("P1 messages not delivered")
        elapsed = time.monotonic() - started
        cpu.wait_idle(server.pid)
        used = cpu.tree_cpu_seconds(server.pid) - before
        return {
            "seconds": round(elapsed, 2),
            "msgs_per_s": round(messages / elapsed),
            "cpu_ms_per_message": round(used / messages * 1000, 3),
        }

    def stop(self) -> None:
        self.server.stop()
        self.sink.stop()
        shutil.rmtree(self.work, ignore_errors=True)


def p4_p5(
    base: Path,
    parts: set[str],
    bulk: tuple[int, int],
    single: int,
    domains: int,
    scaling_messages: int,
    runs: int,
    results: dict[str, object],
) -> None:
    """P4 memory with the queue loaded, P5 restarts on that spool, and the scaling runs."""
    if "scaling" in parts:
        empty = LoadedQueue(base, (0, 0), 0, 0)
        try:
            empty.server.start()
            empty_runs = [empty.p1(scaling_messages) for _ in range(runs)]
        finally:
            empty.stop()
        for n, run in enumerate(empty_runs):
            print(f"scaling: empty queue run {n + 1}/{runs}: {run}", flush=True)
    loaded = LoadedQueue(base, bulk, single, domains)
    try:
        phase = time.monotonic()
        p4 = loaded.load()
        results["p4"] = p4
        print(f"P4: {p4} ({time.monotonic() - phase:.0f} s)", flush=True)
        if "p5" in parts:
            p5 = {how: loaded.restart(how) for how in ("sigterm", "sigkill")}
            results["p5"] = {"queued_recipients": loaded.queued, **p5}
            print(f"P5: {results['p5']}", flush=True)
        if "scaling" in parts:
            loaded_runs = [loaded.p1(scaling_messages) for _ in range(runs)]
            for n, run in enumerate(loaded_runs):
                print(f"scaling: loaded queue run {n + 1}/{runs}: {run}", flush=True)

            def median(samples: list[dict[str, float]], key: str) -> float:
                return statistics.median(s[key] for s in samples)

            results["scaling"] = {
                "messages": scaling_messages,
                "queued_elsewhere": loaded.queued,
                "empty": empty_runs,
                "loaded": loaded_runs,
                "median_seconds": {
                    "empty": median(empty_runs, "seconds"),
                    "loaded": median(loaded_runs, "seconds"),
                },
                "median_cpu_ms_per_message": {
                    "empty": median(empty_runs, "cpu_ms_per_message"),
                    "loaded": median(loaded_runs, "cpu_ms_per_message"),
                },
            }
            print(f"scaling: {results['scaling']['median_cpu_ms_per_message']}", flush=True)
    finally:
        loaded.stop()


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


# -- P2 -------------------------------------------------------------------------


def _post_transmissions(port: int, requests: int, rcpts: int, clients: int) -> tuple[int, int]:
    """POST `requests` transmissions of `rcpts` recipients from `clients` keep-alive
    connections; returns (accepted recipients, failed requests).

    The ~4 KB body is in 80-octet lines: one 4,000-octet line is a 400 (RFC 5322's
    998), which made every request fail."""
    body_rfc822 = (
        "From: bench@source.test\r\nTo: undisclosed-recipients:;\r\n"
        "Subject: transmissions bench\r\n\r\n" + "X" * 78 + "\r\n"
    ) * 1
    payloads = [
        json.dumps(
            {
                "campaign_id": "bench",
                "return_path": "bench@source.test",
                "recipients": [{"address": f"r{n}.{i}@sink.test"} for i in range(rcpts)],
                "content": {"email_rfc822": body_rfc822 + ("Y" * 78 + "\r\n") * 50},
            }
        ).encode()
        for n in range(clients)
    ]
    todo = list(range(requests))
    lock = threading.Lock()
    accepted = [0]
    failed = [0]
    errors: list[str] = []

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                if not todo:
                    break
                todo.pop()
            try:
                conn.request(
                    "POST",
                    "/api/v1/transmissions",
                    body=payloads[n],
                    headers={"Authorization": peers.API_KEY, "Content-Type": "application/json"},
                )
                reply = conn.getresponse()
                data = reply.read()
                ok = reply.status == 200
                if not ok and not errors:
                    errors.append(f"{reply.status} {data[:300]!r}")
                count = json.loads(data)["results"]["total_accepted_recipients"] if ok else 0
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                ok, count = False, 0
            with lock:
                accepted[0] += count
                failed[0] += 0 if ok else 1
        conn.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=1800)
    if errors:
        print(f"P2: first refused transmission: {errors[0]}", flush=True)
    return accepted[0], failed[0]


def p2(base: Path, requests: int, single: int, runs: int, results: dict[str, object]) -> None:
    """Transmissions API: bulk recipients/s (4 clients) and single-recipient ones/s (20)."""
    if not (peers.ROOT / "mtaserver" / "http" / "transmissions").exists():
        results["p2"] = {"measured": False, "why": "no mtaserver/http/transmissions"}
        print("P2: not measured (no Transmissions API)", flush=True)
        return
    shapes = {"bulk": (requests, 1000, 4), "single": (single, 1, 20)}
    samples: dict[str, list[dict[str, float]]] = {"bulk": [], "single": []}
    for run in range(runs):
        for shape, (count, rcpts, clients) in shapes.items():
            if count <= 0:
                continue
            work = fresh_dir(base, "p2")
            sink = peers.Sink()
            server = peers.MtaServer(work, sink.port)
            try:
                server.start()
                if not peers.wait_for_port(server.api_port, 30):
                    raise RuntimeError("Transmissions API did not listen")
                _post_transmissions(server.api_port, 2, rcpts, 1)  # warm up
                started = time.monotonic()
                accepted, failed = _post_transmissions(server.api_port, count, rcpts, clients)
                elapsed = time.monotonic() - started
            finally:
                server.stop()
                sink.stop()
                shutil.rmtree(work, ignore_errors=True)
            sample = {
                "seconds": round(elapsed, 2),
                "accepted_recipients": accepted,
                "failed_requests": failed,
                "rcpts_per_s": round(accepted / elapsed),
                "transmissions_per_s": round((count - failed) / elapsed, 1),
            }
            samples[shape].append(sample)
            print(f"P2 {shape} run {run + 1}/{runs}: {sample}", flush=True)
    results["p2"] = {
        "measured": True,
        "bulk": f"{requests} POST /api/v1/transmissions of 1,000 recipients each "
        "(email_rfc822, 5 KB), 4 keep-alive clients, delivery to smtp-sink meanwhile",
        "single": f"{single} POST /api/v1/transmissions of 1 recipient each, 20 clients",
        "samples": samples,
        "median_bulk_rcpts_per_s": statistics.median(s["rcpts_per_s"] for s in samples["bulk"])
        if samples["bulk"]
        else None,
        "median_single_transmissions_per_s": statistics.median(
            s["transmissions_per_s"] for s in samples["single"]
        )
        if samples["single"]
        else None,
    }
    print(
        f"P2: bulk {results['p2']['median_bulk_rcpts_per_s']} rcpt/s, single "  # type: ignore[index]
        f"{results['p2']['median_single_transmissions_per_s']} transmissions/s",  # type: ignore[index]
        flush=True,
    )


# -- CPU per message -------------------------------------------------------------


def cpu_figures(base: Path, messages: int, runs: int, results: dict[str, object]) -> None:
    """CPU seconds per message (bench/cpu.py) for the three P1 shapes, medians of `runs`."""
    import cpu

    shapes = {
        "5k": (messages, 5000, 1),
        "50k": (messages // 3, 50000, 1),
        "1000rcpt": (50, 5000, 1000),
    }
    out: dict[str, object] = {}
    for name, (count, size, rcpts) in shapes.items():
        samples = [
            cpu.cpu_per_message(base, count, size, rcpts)["cpu_ms_per_message"] for _ in range(runs)
        ]
        out[name] = {
            "messages": count,
            "samples_ms": [round(x, 3) for x in samples],
            "median_ms_per_message": round(statistics.median(samples), 3),
        }
        print(f"cpu {name}: {out[name]}", flush=True)
    results["cpu"] = out


# -- profile ----------------------------------------------------------------------


def profile(base: Path, messages: int, out: Path) -> None:
    """py-spy record (raw collapsed stacks and an SVG) of mtaserver under P1 5 KB."""
    spy_bin = Path(sys.executable).parent / "py-spy"
    if not spy_bin.exists():
        import cpu

        print("py-spy not installed (.venv/bin/pip install py-spy): cProfile instead", flush=True)
        stats = f"{out}.pstats"
        extra = ["--profile", stats, "--profiler", "cprofile", "--savestats"]
        run = cpu.cpu_per_message(base, messages, extra_args=extra)
        print(f"profiled run (reactor thread only): {run}; pstats: {stats}", flush=True)
        return
    spies: list[subprocess.Popen[bytes]] = []

    def attach(_port: int, pid: int) -> None:
        for fmt, suffix in (("raw", "txt"), ("flamegraph", "svg")):
            spies.append(
                subprocess.Popen(
                    [
                        str(spy_bin),
                        "record",
                        "-r",
                        "100",
                        "-f",
                        fmt,
                        "-o",
                        f"{out}.{suffix}",
                        "--pid",
                        str(pid),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(1)

    try:
        run = _relay_once("mtaserver", base, "5k", messages, on_server=attach)
        print(f"profiled run: {run}", flush=True)
    finally:
        for spy in spies:  # they stop on their own when the server exits
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
    print(f"profile: {out}.txt {out}.svg", flush=True)


# -- P7 -------------------------------------------------------------------------


def p7(base: Path, entries: int, results: dict[str, object]) -> None:
    """Suppression lookups/s and bytes per entry at `entries` (bench/suppression_bench.py)."""
    import suppression_bench

    directory = str(base / "suppression")
    loaded = suppression_bench.load(directory, 0, entries, 10_000, compact=True)
    measured = suppression_bench.in_child(directory, entries)
    out = {
        "entries": entries,
        "bulk_add_per_s": round(entries / loaded["add_s"]),
        "open_ms": round(measured["open_s"] * 1000),
        "rss_bytes_per_entry": round(measured["rss_per_entry"], 1),
        "lookup_hits_per_s": round(measured["hits_per_s"]),
        "lookup_misses_per_s": round(measured["misses_per_s"]),
        "lookup_hits_per_cpu_s": round(measured["hits_per_cpu_s"]),
        "lookup_misses_per_cpu_s": round(measured["misses_per_cpu_s"]),
    }
    results["p7"] = out
    print(
        f"P7 suppression at {entries:,} entries: lookups {out['lookup_hits_per_s']:,}/s hits, "
        f"{out['lookup_misses_per_s']:,}/s misses (2 scopes each); "
        f"{out['rss_bytes_per_entry']} bytes/entry resident; open {out['open_ms']} ms",
        flush=True,
    )


PARTS = ("p1", "p3", "p6", "p2", "p4", "p5", "scaling", "p7", "cpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"comma-separated parts: {','.join(PARTS)},profile (default: all but profile)",
    )
    parser.add_argument("--runs", type=int, default=3)
    for name, (_, default) in SCENARIOS.items():
        parser.add_argument(
            f"--messages-{name}",
            type=int,
            default=default,
            help=f"P1 message count for {name} (default {default}; 0 skips)",
        )
    parser.add_argument(
        "--p4-bulk",
        default="1000x1000",
        help="P4: MESSAGESxRECIPIENTS queued to one down destination (default 1000x1000)",
    )
    parser.add_argument(
        "--p4-single", type=int, default=100_000, help="P4: single-recipient messages queued"
    )
    parser.add_argument(
        "--p4-domains", type=int, default=1000, help="P4: domains the single ones go to"
    )
    parser.add_argument(
        "--scaling-messages",
        type=int,
        default=3000,
        help="scaling: 5 KB messages per P1 run with the queue empty and with P4's load",
    )
    parser.add_argument(
        "--p2-requests", type=int, default=100, help="P2: transmissions of 1,000 recipients per run"
    )
    parser.add_argument(
        "--p2-single", type=int, default=5000, help="P2: single-recipient transmissions per run"
    )
    parser.add_argument(
        "--p7-entries", type=int, default=1_000_000, help="P7: suppression entries to load"
    )
    parser.add_argument(
        "--cpu-messages", type=int, default=3000, help="cpu: messages per CPU-per-message run"
    )
    parser.add_argument("--profile-out", default="/tmp/mtaserver-profile")
    parser.add_argument(
        "--workers",
        help="reception-workers in mtaserver's config (auto, or N; 0 is one process; "
        "default: not written, the server's default)",
    )
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    peers.RECEPTION_WORKERS = args.workers
    parts = set(args.only.split(","))
    unknown = parts - set(PARTS) - {"profile"}
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    results: dict[str, object] = {
        "machine": machine(),
        "started": time.ctime(),
        "reception_workers": args.workers or "server default",
    }
    durations: dict[str, float] = {}
    results["durations_s"] = durations
    print(json.dumps(results["machine"]), flush=True)
    began = time.monotonic()

    @contextlib.contextmanager
    def timed(name: str) -> Iterator[None]:
        started = time.monotonic()
        print(f"== {name} ==", flush=True)
        try:
            yield
        finally:
            durations[name] = round(time.monotonic() - started, 1)
            print(f"== {name} took {durations[name]:.0f} s ==", flush=True)

    with tempfile.TemporaryDirectory(prefix="mtaserver-bench-") as tmp:
        base = Path(tmp)
        base.chmod(0o755)  # Postfix's unprivileged daemons reach their data_directory
        if "p1" in parts:
            with timed("p1"):
                counts = {name: getattr(args, f"messages_{name}") for name in SCENARIOS}
                p1(base, counts, args.runs, results)
        if "cpu" in parts:
            with timed("cpu"):
                cpu_figures(base, args.cpu_messages, args.runs, results)
        if "p3" in parts:
            with timed("p3"):
                p3(base, args.messages_5k, args.runs, results)
        if "p6" in parts:
            with timed("p6"):
                p6(base, args.messages_5k, results)
        if "p2" in parts:
            with timed("p2"):
                p2(base, args.p2_requests, args.p2_single, args.runs, results)
        if parts & {"p4", "p5", "scaling"}:
            with timed("p4,p5,scaling"):
                messages, rcpts = (int(x) for x in args.p4_bulk.split("x"))
                p4_p5(
                    base,
                    parts,
                    (messages, rcpts),
                    args.p4_single,
                    args.p4_domains,
                    args.scaling_messages,
                    args.runs,
                    results,
                )
        if "p7" in parts:
            with timed("p7"):
                p7(base, args.p7_entries, results)
        if "profile" in parts:
            with timed("profile"):
                profile(base, args.messages_5k, Path(args.profile_out))
    durations["total"] = round(time.monotonic() - began, 1)
    results["loadavg_at_end"] = Path("/proc/loadavg").read_text().split(" ")[0]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results, indent=2, default=str))
    print(f"durations (s): {durations}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
