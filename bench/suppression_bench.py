"""Suppression list at scale: bulk-add throughput, open time, RSS per entry, lookups/s.

Loads `--entries` entries (default 1,000,000; 90% global, 10% domain-scoped) with
`add()` in batches of `--batch`, compacting whenever `compaction_due()` says so (as the
server's periodic compaction would) and once at the end. Then, in a fresh process so the
loading does not pollute the figures, it opens the store (recovery: snapshot index plus
log replay) and measures the RSS growth per entry and lookups/s on the calling thread,
for hits and misses, checking two scopes (`global` and a sending domain) per lookup as
RCPT will. A last run measures opening with `--log-entries` changes still in the log.

    .venv/bin/python bench/suppression_bench.py [--entries 1000000] [--batch 10000]
                                                [--dir /path] [--keep]

Goals: RSS well under 200 bytes/entry at 1M; lookups >= 100,000/s on one core.
The machine may be shared: the per-CPU-second lookup rates are the robust figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from mtaserver.suppression import Entry, SuppressionSource, SuppressionStore, SuppressionType

DOMAINS = 1000


def recipient(i: int) -> str:
    return f"user{i}@example{i % DOMAINS}.com"


def entry(i: int, now: int) -> Entry:
    scope = f"domain:sender{i % 7}.example" if i % 10 == 0 else "global"
    return Entry(
        scope,
        recipient(i),
        SuppressionType.NON_TRANSACTIONAL if i % 3 else SuppressionType.BOTH,
        SuppressionSource.BOUNCE_RULE if i % 5 else SuppressionSource.SPAM_COMPLAINT,
        "550 5.1.1 user unknown" if i % 5 else "",
        now,
        now,
    )


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def load(directory: str, start: int, stop: int, batch: int, compact: bool) -> dict[str, float]:
    store = SuppressionStore.open(directory)
    adding = compacting = 0.0
    for first in range(start, stop, batch):
        entries = [entry(i, 1_700_000_000 + i) for i in range(first, min(stop, first + batch))]
        t0 = time.perf_counter()
        store.add(entries)
        adding += time.perf_counter() - t0
        if compact and store.compaction_due():
            t0 = time.perf_counter()
            store.compact()
            compacting += time.perf_counter() - t0
    if compact:
        t0 = time.perf_counter()
        store.compact()
        compacting += time.perf_counter() - t0
    store.close()
    return {"add_s": adding, "compact_s": compacting}


def measure(directory: str, entries: int) -> dict[str, float]:
    """Run in a fresh process: open time, RSS growth, lookups/s."""
    rng = random.Random(1)
    hits = [rng.randrange(entries) for _ in range(200_000)]
    hit_args = [(recipient(i), (f"domain:sender{i % 7}.example", "global")) for i in hits]
    miss_args = [
        (f"nobody{i}@example{i % DOMAINS}.com", ("domain:x.example", "global")) for i in hits
    ]
    before = rss_bytes()
    t0 = time.perf_counter()
    store = SuppressionStore.open(directory)
    open_s = time.perf_counter() - t0
    rss = rss_bytes() - before
    assert store.count() >= entries, store.count()
    results = {"open_s": open_s, "rss_per_entry": rss / store.count(), "count": store.count()}
    for name, args in (("hits", hit_args), ("misses", miss_args)):
        lookup = store.lookup
        found = 0
        t0 = time.perf_counter()
        c0 = time.process_time()
        for address, scopes in args:
            found += lookup(address, scopes) is not None
        cpu = time.process_time() - c0
        elapsed = time.perf_counter() - t0
        assert found == (len(args) if name == "hits" else 0), (name, found)
        results[f"{name}_per_s"] = len(args) / elapsed
        results[f"{name}_per_cpu_s"] = len(args) / cpu
    store.close()
    return results


def concurrent_adds(directory: str, start: int, threads: int, each: int) -> dict[str, float]:
    """Single-entry adds from `threads` threads at once: group commit at work."""
    syncs = 0

    def sync(fd: int) -> None:
        nonlocal syncs
        syncs += 1
        os.fdatasync(fd)

    store = SuppressionStore.open(directory, sync=sync)

    def worker(n: int) -> None:
        for k in range(each):
            store.add([entry(start + n * each + k, 1_800_000_000)])

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    store.close()
    return {"adds_per_s": threads * each / elapsed, "syncs": syncs}


def in_child(directory: str, entries: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--measure", directory, "--entries", str(entries)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--log-entries", type=int, default=100_000)
    parser.add_argument("--dir")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.entries)))
        return
    directory = args.dir or tempfile.mkdtemp(prefix="suppression-bench-")
    try:
        loaded = load(directory, 0, args.entries, args.batch, compact=True)
        snap = in_child(directory, args.entries)
        size = sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory))
        total = args.entries + args.log_entries
        logged = load(directory, args.entries, total, args.batch, compact=False)
        mixed = in_child(directory, total)
        group = concurrent_adds(directory, total, 16, 500)
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    rows = [
        ("entries", f"{args.entries:,}"),
        (
            f"bulk add (batches of {args.batch}, fsync each)",
            f"{args.entries / loaded['add_s']:,.0f} entries/s",
        ),
        ("compaction, all rounds", f"{loaded['compact_s']:.1f} s"),
        ("on disk", f"{size / args.entries:.0f} bytes/entry"),
        ("open (snapshot only)", f"{snap['open_s'] * 1000:.0f} ms"),
        ("RSS after open", f"{snap['rss_per_entry']:.1f} bytes/entry"),
        (
            "lookup hits, 2 scopes",
            f"{snap['hits_per_s']:,.0f} /s ({snap['hits_per_cpu_s']:,.0f} per CPU-second)",
        ),
        (
            "lookup misses, 2 scopes",
            f"{snap['misses_per_s']:,.0f} /s ({snap['misses_per_cpu_s']:,.0f} per CPU-second)",
        ),
        (
            f"bulk add into the log ({args.log_entries:,})",
            f"{args.log_entries / logged['add_s']:,.0f} entries/s",
        ),
        (f"open, +{args.log_entries:,} in the log", f"{mixed['open_s'] * 1000:.0f} ms"),
        (f"RSS, +{args.log_entries:,} in the log", f"{mixed['rss_per_entry']:.1f} bytes/entry"),
        (
            "lookup hits / misses, with log",
            f"{mixed['hits_per_s']:,.0f} / {mixed['misses_per_s']:,.0f} /s",
        ),
    ]
    rows.append(
        (
            "single-entry adds, 16 threads x 500",
            f"{group['adds_per_s']:,.0f} /s, {group['syncs']:,.0f} fdatasyncs for 8,000 adds",
        )
    )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
