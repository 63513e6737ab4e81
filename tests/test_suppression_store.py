"""The suppression store: entries, scopes, search, CSV, durability and recovery."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtaserver.suppression import (
    CsvImportError,
    Entry,
    SuppressionError,
    SuppressionSource,
    SuppressionStore,
    SuppressionStoreError,
    SuppressionType,
    domain_scope,
    parse_csv,
    source_scope,
    suppression_directory,
)

T = SuppressionType.TRANSACTIONAL
N = SuppressionType.NON_TRANSACTIONAL
BOTH = SuppressionType.BOTH


def files(directory) -> list[str]:
    return sorted(os.listdir(directory))


def log_path(directory) -> str:
    (name,) = [n for n in files(directory) if n.startswith("log.")]
    return os.path.join(directory, name)


def everything(store: SuppressionStore) -> dict[tuple[str, str], Entry]:
    return {entry.key: entry for entry in store.export()}


def test_pure_core_imports_no_reactor():
    """The suppression package imports nothing from twisted.internet (callable from threads)."""
    code = (
        "import sys, mtaserver.suppression; "
        "print(sorted(m for m in sys.modules if m.startswith('twisted.internet')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- entries and validation -----------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "no-at-sign",
        "@example.com",
        "user@",
        "a@b@example.com",
        "user@exa mple.com",
        "us\r\ner@example.com",
        "user@example.com\n",
        "us\x00er@example.com",
        "us,er@example.com",
        '"quoted"@example.com',
        "<user@example.com>",
        "user@-example.com",
        "user@example..com",
        ".user@example.com",
        "x" * 65 + "@example.com",
        "user@" + "a" * 64 + ".com",
        "user\u2028@example.com",
    ],
)
def test_bad_recipients_are_refused(bad):
    """Addresses that are junk or carry separators/controls are refused with SuppressionError."""
    with pytest.raises(SuppressionError):
        Entry.make(bad, now=1)


def test_entry_make_normalises():
    """Recipients and domain scopes are lower-cased; `created` defaults to `now`."""
    entry = Entry.make(" User@Example.COM ", now=7, scope="Domain:Mail.Example.ORG")
    assert entry.recipient == "user@example.com"
    assert entry.scope == "domain:mail.example.org"
    assert (entry.created, entry.updated) == (7, 7)
    assert entry.type == BOTH and entry.source == SuppressionSource.MANUALLY_ADDED


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scope": "everyone"},
        {"scope": "domain:"},
        {"scope": "domain:bad domain"},
        {"scope": "source:"},
        {"scope": "source:a b"},
        {"source": "Complained"},
        {"description": "line\nbreak"},
        {"description": "x" * 1025},
        {"type": SuppressionType(0)},
        {"now": -1},
        {"now": 1.5},
    ],
)
def test_bad_fields_are_refused(kwargs):
    """Unknown scopes and sources, control characters, empty types and bad times are refused."""
    kwargs = {"now": 1, **kwargs}
    with pytest.raises(SuppressionError):
        Entry.make("user@example.com", **kwargs)


def test_sparkpost_source_words_are_accepted():
    """`source` takes SparkPost's words, case-insensitively."""
    entry = Entry.make("a@example.com", now=1, source="spam complaint")
    assert entry.source == SuppressionSource.SPAM_COMPLAINT
    assert {s.value for s in SuppressionSource} == {
        "Bounce Rule",
        "Spam Complaint",
        "Manually Added",
        "Unsubscribe",
        "Compliance",
    }


# -- the store ------------------------------------------------------------------------


def test_round_trip_survives_reopen(tmp_path):
    """Added entries are looked up equal, before and after the store is reopened."""
    directory = suppression_directory(str(tmp_path))
    assert directory == str(tmp_path / "suppression")
    entries = [
        Entry.make("a@example.com", now=10, type=T, source="Bounce Rule", description="550 5.1.1"),
        Entry.make("b@example.com", now=11, scope="domain:sender.example", description="é ✓"),
        Entry.make("c@example.com", now=12, scope="source:inbound", type=N),
    ]
    with SuppressionStore.open(directory) as store:
        assert store.add(entries) == 3
        for entry in entries:
            assert store.get(entry.scope, entry.recipient) == entry
    with SuppressionStore.open(directory) as store:
        assert store.count() == 3
        assert everything(store) == {e.key: e for e in entries}
        assert store.lookup("A@EXAMPLE.COM") == entries[0]


def test_upsert_replaces_fields_and_keeps_created(tmp_path):
    """Adding an existing key replaces it, keeps its `created`, and does not grow the count."""
    with SuppressionStore.open(str(tmp_path)) as store:
        store.add([Entry.make("a@example.com", now=100, type=T, description="first")])
        again = Entry.make("a@example.com", now=200, type=N, source="Compliance", description="2")
        assert store.add([again]) == 0
        assert store.count() == 1
        found = store.lookup("a@example.com")
        assert found == attrs.evolve(again, created=100)
    with SuppressionStore.open(str(tmp_path)) as store:
        assert store.lookup("a@example.com") == attrs.evolve(again, created=100)


def test_same_key_twice_in_one_batch_last_wins(tmp_path):
    """Within one add() call the last entry for a key wins, with the first one's `created`."""
    with SuppressionStore.open(str(tmp_path)) as store:
        first = Entry.make("a@example.com", now=1, description="one")
        second = Entry.make("a@example.com", now=2, description="two")
        assert store.add([first, second]) == 1
        assert store.lookup("a@example.com") == attrs.evolve(second, created=1)
        assert store.count() == 1


def test_remove(tmp_path):
    """remove() drops the entry durably; removing an absent one is False and writes nothing."""
    with SuppressionStore.open(str(tmp_path)) as store:
        store.add([Entry.make("a@example.com", now=1), Entry.make("b@example.com", now=1)])
        assert store.remove("global", "A@example.com") is True
        assert store.lookup("a@example.com") is None
        size = os.path.getsize(log_path(tmp_path))
        assert store.remove("global", "a@example.com") is False
        assert store.remove("domain:example.com", "b@example.com") is False
        assert os.path.getsize(log_path(tmp_path)) == size
        assert store.count() == 1
    with SuppressionStore.open(str(tmp_path)) as store:
        assert store.lookup("a@example.com") is None
        assert store.lookup("b@example.com") is not None
        assert store.count() == 1


def test_scopes(tmp_path):
    """A domain-scoped entry suppresses only that sending domain; a global one suppresses all."""
    with SuppressionStore.open(str(tmp_path)) as store:
        store.add(
            [
                Entry.make("d@example.com", now=1, scope=domain_scope("one.example")),
                Entry.make("g@example.com", now=1),
                Entry.make("s@example.com", now=1, scope=source_scope("api")),
            ]
        )
        one = (domain_scope("one.example"), "global")
        two = (domain_scope("two.example"), "global")
        assert store.lookup("d@example.com", one) is not None
        assert store.lookup("d@example.com", two) is None
        assert store.lookup("d@example.com") is None
        assert store.lookup("g@example.com", one) is not None
        assert store.lookup("g@example.com", two) is not None
        assert store.lookup("s@example.com", (source_scope("api"),)) is not None
        assert store.lookup("s@example.com", (source_scope("smtp"), "global")) is None


def test_lookup_scope_order_and_type(tmp_path):
    """lookup() returns the first scope's entry, and with `type` skips entries of the other type."""
    with SuppressionStore.open(str(tmp_path)) as store:
        store.add(
            [
                Entry.make("r@example.com", now=1, scope="domain:a.example", type=T),
                Entry.make("r@example.com", now=2, type=N),
            ]
        )
        scopes = ("domain:a.example", "global")
        assert store.lookup("r@example.com", scopes).scope == "domain:a.example"
        assert store.lookup("r@example.com", scopes[::-1]).scope == "global"
        assert store.lookup("r@example.com", scopes, type=N).scope == "global"
        assert store.lookup("r@example.com", ("domain:a.example",), type=N) is None


def test_search_filters(tmp_path):
    """search() filters on updated time window, types, sources and scope."""
    with SuppressionStore.open(str(tmp_path)) as store:
        store.add(
            [
                Entry.make("a@x.example", now=100, type=T, source="Bounce Rule"),
                Entry.make("b@x.example", now=200, type=N, source="Spam Complaint"),
                Entry.make("c@x.example", now=300, type=BOTH, source="Unsubscribe"),
                Entry.make("d@x.example", now=300, scope="domain:s.example", source="Compliance"),
            ]
        )
        store.compact()
        store.add([Entry.make("e@x.example", now=400, type=T, source="Bounce Rule")])

        def recipients(**kw) -> set[str]:
            page = store.search(**kw)
            assert page.cursor is None
            return {e.recipient for e in page.entries}

        assert recipients() == {
            "a@x.example",
            "b@x.example",
            "c@x.example",
            "d@x.example",
            "e@x.example",
        }
        assert recipients(since=200, until=400) == {"b@x.example", "c@x.example", "d@x.example"}
        assert recipients(types=T) == {"a@x.example", "c@x.example", "d@x.example", "e@x.example"}
        assert recipients(types=N, scope="global") == {"b@x.example", "c@x.example"}
        assert recipients(sources=[SuppressionSource.BOUNCE_RULE]) == {"a@x.example", "e@x.example"}
        assert recipients(scope="domain:S.example") == {"d@x.example"}


def test_search_pages_with_a_cursor(tmp_path):
    """Paging with the returned cursor yields every matching entry exactly once, then None."""
    with SuppressionStore.open(str(tmp_path)) as store:
        store.add([Entry.make(f"r{i}@example.com", now=i) for i in range(250)])
        store.compact()
        store.add([Entry.make(f"r{i}@example.com", now=i) for i in range(250, 330)])
        store.remove("global", "r3@example.com")
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            page = store.search(cursor=cursor, limit=40, since=10)
            seen += [e.recipient for e in page.entries]
            pages += 1
            if page.cursor is None:
                break
            cursor = page.cursor
        assert sorted(seen) == sorted(f"r{i}@example.com" for i in range(10, 330) if i != 3)
        assert len(seen) == len(set(seen))
        assert pages >= 8
        with pytest.raises(SuppressionError):
            store.search(cursor="not-a-cursor")


# -- CSV --------------------------------------------------------------------------------


def test_csv_export_import_round_trip(tmp_path):
    """export_csv then import_csv into an empty store gives back the same entries."""
    entries = [
        Entry.make("a@example.com", now=5, type=BOTH, description='say "hi", then =SUM(A1)'),
        Entry.make("b@example.com", now=6, type=N, scope="domain:s.example", source="Compliance"),
        Entry.make("c@example.com", now=7, type=T, scope="source:api", description="x,y;z"),
    ]
    with SuppressionStore.open(str(tmp_path / "one")) as store:
        store.add(entries)
        out = io.StringIO()
        assert store.export_csv(out) == 4  # both types: one row each, as SparkPost exports
    text = out.getvalue()
    assert text.startswith("recipient,type,source,description,scope,created,updated\r\n")
    with SuppressionStore.open(str(tmp_path / "two")) as store:
        assert store.import_csv(io.StringIO(text, newline=""), now=99) == 3
        assert everything(store) == {e.key: e for e in entries}


def test_csv_minimal_sparkpost_upload():
    """A recipient,type,description file gets the defaults; rows per type merge into one entry."""
    text = (
        "Recipient,Type,Description\n"
        "A@example.com,transactional,first\n"
        "a@example.com,non_transactional,first\n"
        "b@example.com,,\n"
        "\n"
    )
    entries = parse_csv(io.StringIO(text, newline=""), now=42, source=SuppressionSource.UNSUBSCRIBE)
    by_recipient = {e.recipient: e for e in entries}
    assert by_recipient["a@example.com"].type == BOTH
    assert by_recipient["b@example.com"] == Entry.make(
        "b@example.com", now=42, source="Unsubscribe"
    )


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('recipient\nok@example.com\n"bad\r\naddr@example.com"\n', 3, "forbidden character"),
        ('recipient\nok@example.com\n"x\nx@example.com"\n', 3, "forbidden character"),
        ('recipient\nok@example.com\n"a,b@example.com"\n', 3, "forbidden character"),
        ("recipient\nok@example.com\njust some junk\n", 3, "forbidden character ' '"),
        ("recipient\nok@example.com\njunk\n", 3, "not an address"),
        ("recipient\nok@example.com\nuser@localhost!\n", 3, "not a domain"),
        ("recipient,type\nok@example.com,transactional\nb@example.com,both\n", 3, "type"),
        ("recipient,source\nok@example.com,Bounce Rule\nb@example.com,Complained\n", 3, "source"),
        ('recipient,description\nok@example.com,"multi\nline"\n', 2, "control character"),
        ("recipient,description\nok@example.com,a,b\n", 2, "fields"),
        ('recipient\n"unterminated@example.com\n', 2, "malformed"),
        ('recipient\nab"c@example.com\n', 2, "forbidden character"),
        ("recipient\nnul\x00@example.com\n", 2, "NUL"),
        ("recipient,created\nok@example.com,yesterday\n", 2, "epoch"),
        ("recipient,tpye\nok@example.com,transactional\n", 1, "unknown column"),
        ("email\nok@example.com\n", 1, "unknown column"),
        ("", 1, "empty"),
    ],
)
def test_csv_hostile_input_is_refused_naming_the_line(tmp_path, text, line, words):
    """CR/LF, commas, quotes, NULs and junk refuse the whole upload with the line at fault."""
    with SuppressionStore.open(str(tmp_path)) as store:
        with pytest.raises(CsvImportError) as caught:
            store.import_csv(io.StringIO(text, newline=""), now=1)
        assert caught.value.line == line
        assert str(caught.value).startswith(f"line {line}: ")
        assert words.lower() in str(caught.value).lower()
        assert store.count() == 0


# -- durability -------------------------------------------------------------------------


def test_torn_tail_is_cut_off(tmp_path):
    """A log cut mid-record loses only the unfinished batch; the file is truncated and usable."""
    directory = str(tmp_path)
    with SuppressionStore.open(directory) as store:
        store.add([Entry.make("kept@example.com", now=1)])
        whole = os.path.getsize(log_path(directory))
        store.add([Entry.make(f"torn{i}@example.com", now=2) for i in range(5)])
    with open(log_path(directory), "r+b") as f:
        f.truncate(os.path.getsize(log_path(directory)) - 7)
    with SuppressionStore.open(directory) as store:
        assert os.path.getsize(log_path(directory)) == whole
        assert store.count() == 1
        assert store.lookup("torn0@example.com") is None  # all of the batch or none of it
        store.add([Entry.make("after@example.com", now=3)])
    with SuppressionStore.open(directory) as store:
        assert set(e.recipient for e in store.export()) == {"kept@example.com", "after@example.com"}


def test_batch_without_end_marker_and_garbage_are_dropped(tmp_path):
    """Records not followed by their end marker, or failing their checksum, are not applied."""
    from mtaserver.suppression.store import KIND_ADD, encode_entry, frame

    directory = str(tmp_path)
    with SuppressionStore.open(directory) as store:
        store.add([Entry.make("kept@example.com", now=1)])
    whole = os.path.getsize(log_path(directory))
    with open(log_path(directory), "ab") as f:
        f.write(frame(KIND_ADD, encode_entry(Entry.make("uncommitted@example.com", now=2))))
    with SuppressionStore.open(directory) as store:
        assert store.lookup("uncommitted@example.com") is None
        assert os.path.getsize(log_path(directory)) == whole
    bad = bytearray(frame(KIND_ADD, encode_entry(Entry.make("flipped@example.com", now=2))))
    bad[-3] ^= 0x20
    with open(log_path(directory), "ab") as f:
        f.write(bytes(bad) + b"\x00" * 50)
    with SuppressionStore.open(directory) as store:
        assert store.count() == 1
        assert store.lookup("flipped@example.com") is None
        assert os.path.getsize(log_path(directory)) == whole


def test_compaction(tmp_path):
    """compact() leaves one snapshot and one log holding the same entries, removals included."""
    directory = str(tmp_path)
    with SuppressionStore.open(directory, compact_after=10) as store:
        store.add([Entry.make(f"r{i}@example.com", now=i) for i in range(30)])
        store.remove("global", "r5@example.com")
        assert store.compaction_due()
        before = everything(store)
        store.compact()
        assert not store.compaction_due()
        assert [n.split(".")[0] for n in files(directory)] == ["log", "snapshot"]
        assert everything(store) == before
        store.remove("global", "r6@example.com")
        store.add([Entry.make("r0@example.com", now=99, description="updated")])
        store.compact()
        store.add([Entry.make("new@example.com", now=100)])
        expected = everything(store)
        assert len(expected) == 29
    with SuppressionStore.open(directory) as store:
        assert everything(store) == expected
        assert store.count() == 29
        assert store.lookup("r0@example.com").created == 0


def test_crash_between_log_rotation_and_snapshot_rename(tmp_path):
    """With the old snapshot, the old log and the new log on disk, both logs are replayed."""
    directory = str(tmp_path / "store")
    with SuppressionStore.open(directory) as store:
        store.add([Entry.make("a@example.com", now=1), Entry.make("gone@example.com", now=1)])
        old_log = log_path(directory)
        shutil.copy(old_log, tmp_path / "old-log")
        store.compact()
        store.add([Entry.make("b@example.com", now=2)])
        store.remove("global", "gone@example.com")
    # Put the directory back as it was after rotation, before the snapshot's rename.
    for name in files(directory):
        if name.startswith("snapshot."):
            os.rename(os.path.join(directory, name), os.path.join(directory, name + ".tmp"))
    shutil.copy(tmp_path / "old-log", old_log)
    with SuppressionStore.open(directory) as store:
        assert {e.recipient for e in store.export()} == {"a@example.com", "b@example.com"}
        assert store.count() == 2
        assert not [n for n in files(directory) if n.endswith(".tmp")]


def test_damaged_snapshot_refuses_to_open(tmp_path):
    """A snapshot whose index fails its checksum is an error, not a silently empty list."""
    directory = str(tmp_path)
    with SuppressionStore.open(directory) as store:
        store.add([Entry.make(f"r{i}@example.com", now=i) for i in range(10)])
        store.compact()
    (snapshot,) = [n for n in files(directory) if n.startswith("snapshot.")]
    path = os.path.join(directory, snapshot)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) - 40)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(SuppressionStoreError, match="damaged"):
        SuppressionStore.open(directory)


def test_lookups_during_compaction(tmp_path):
    """Lookups on one thread keep finding every entry while another thread compacts and adds."""
    with SuppressionStore.open(str(tmp_path), compact_after=1) as store:
        store.add([Entry.make(f"r{i}@example.com", now=i) for i in range(2000)])
        stop = threading.Event()
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                for round_ in range(15):
                    store.add([Entry.make(f"w{round_}-{i}@example.com", now=1) for i in range(50)])
                    store.compact()
            except BaseException as e:  # surfaced by the assertion below
                errors.append(e)
            finally:
                stop.set()

        thread = threading.Thread(target=writer)
        thread.start()
        misses = 0
        rounds = 0
        while not stop.is_set() or rounds == 0:
            rounds += 1
            for i in range(0, 2000, 7):
                misses += store.lookup(f"r{i}@example.com") is None
        thread.join()
        assert not errors
        assert misses == 0
        assert store.count() == 2000 + 15 * 50


def test_concurrent_adds_share_syncs(tmp_path):
    """Adds from many threads are all durable and share fdatasyncs (group commit)."""
    syncs: list[int] = []
    gate = threading.Event()

    def slow_sync(fd: int) -> None:
        syncs.append(fd)
        gate.wait(0.005)  # a disk's sync latency, so that other calls queue meanwhile
        os.fdatasync(fd)

    directory = str(tmp_path)
    with SuppressionStore.open(directory, sync=slow_sync) as store:

        def worker(n: int) -> None:
            for i in range(50):
                store.add([Entry.make(f"t{n}-{i}@example.com", now=i)])
                if i % 10 == 0:
                    store.remove("global", f"t{n}-{i}@example.com")

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert store.count() == 8 * 45
        calls = 8 * 55
        assert len(syncs) < calls / 2
    with SuppressionStore.open(directory) as store:
        assert store.count() == 8 * 45
        expected = {f"t{n}-{i}@example.com" for n in range(8) for i in range(50) if i % 10}
        assert {e.recipient for e in store.export()} == expected


def test_failed_sync_fails_the_add_and_leaves_the_store_usable(tmp_path):
    """A sync error (disk full) fails add() with SuppressionStoreError and writes nothing."""
    failures = [OSError(28, "No space left on device")]

    def sync(fd: int) -> None:
        if failures:
            raise failures.pop()
        os.fdatasync(fd)

    directory = str(tmp_path)
    with SuppressionStore.open(directory, sync=sync) as store:
        size = os.path.getsize(log_path(directory))
        with pytest.raises(SuppressionStoreError, match="No space left"):
            store.add([Entry.make("lost@example.com", now=1)])
        assert os.path.getsize(log_path(directory)) == size
        assert store.lookup("lost@example.com") is None
        assert store.count() == 0
        store.add([Entry.make("kept@example.com", now=2)])
    with SuppressionStore.open(directory) as store:
        assert [e.recipient for e in store.export()] == ["kept@example.com"]


def test_closed_store_refuses_calls(tmp_path):
    """After close(), lookups and writes raise SuppressionStoreError."""
    store = SuppressionStore.open(str(tmp_path))
    store.close()
    with pytest.raises(SuppressionStoreError):
        store.lookup("a@example.com")
    with pytest.raises(SuppressionStoreError):
        store.add([Entry.make("a@example.com", now=1)])


CHILD = textwrap.dedent(
    """
    import sys
    from mtaserver.suppression import Entry, SuppressionStore

    store = SuppressionStore.open(sys.argv[1], compact_after=400)
    i = int(sys.argv[2])
    while True:
        store.add([Entry.make(f"r{i}-{k}@example.com", now=i) for k in range(3)])
        print("add", i, flush=True)
        if i % 7 == 0:
            store.remove("global", f"r{i}-0@example.com")
            print("rm", i, flush=True)
        if store.compaction_due():
            store.compact()
        i += 1
    """
)


def run_and_kill(directory: str, start: int, acks_wanted: int) -> tuple[set[int], set[int]]:
    """Run the child until it acknowledged `acks_wanted` adds, then kill -9 it."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, directory, str(start)], stdout=subprocess.PIPE
    )
    assert child.stdout is not None
    added: set[int] = set()
    removed: set[int] = set()
    try:
        while len(added) < acks_wanted:
            line = child.stdout.readline()
            assert line, "child died early"
            kind, number = line.decode().split()
            (added if kind == "add" else removed).add(int(number))
    finally:
        child.send_signal(signal.SIGKILL)
        rest = child.communicate()[0]
    for line in rest.decode().splitlines():
        if line.count(" ") == 1:  # a line cut by the kill was never flushed whole
            kind, number = line.split()
            (added if kind == "add" else removed).add(int(number))
    return added, removed


def test_acknowledged_entries_survive_sigkill(tmp_path):
    """Every add and remove that returned survives kill -9, over two crashes and compactions."""
    directory = str(tmp_path)
    all_added: set[int] = set()
    all_removed: set[int] = set()
    start = 0
    for _ in range(2):
        added, removed = run_and_kill(directory, start, 700)
        all_added |= added
        all_removed |= removed
        start = max(all_added) + 1
        with SuppressionStore.open(directory) as store:
            present = {(e.recipient, e.created) for e in store.export()}
            assert store.count() == len(present)
            for i in all_added:
                assert (f"r{i}-1@example.com", i) in present
                assert (f"r{i}-2@example.com", i) in present
                if i in all_removed:
                    assert (f"r{i}-0@example.com", i) not in present
                elif i % 7:
                    assert (f"r{i}-0@example.com", i) in present
            # Nothing that was never started appears: at most the batch in flight.
            assert max(created for _, created in present) <= start
            start = max(start, max(created for _, created in present) + 1)
    assert [n for n in files(directory) if n.startswith("snapshot.")], "no compaction ran"


# -- the model ----------------------------------------------------------------------------

RECIPIENTS = [f"r{i}@example.com" for i in range(6)]
SCOPES = ["global", "domain:a.example", "source:api"]

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.lists(
                st.tuples(
                    st.sampled_from(SCOPES),
                    st.sampled_from(RECIPIENTS),
                    st.sampled_from([T, N, BOTH]),
                    st.sampled_from(list(SuppressionSource)),
                    st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl")), max_size=8),
                    st.integers(0, 1000),
                ),
                min_size=1,
                max_size=4,
            ),
        ),
        st.tuples(st.just("remove"), st.sampled_from(SCOPES), st.sampled_from(RECIPIENTS)),
        st.tuples(st.just("compact")),
        st.tuples(st.just("reopen")),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(operations)
def test_operations_then_reopen_equal_a_dict_model(ops):
    """Any sequence of adds, removes, compactions and reopens ends where a dict model does."""
    model: dict[tuple[str, str], Entry] = {}
    with tempfile.TemporaryDirectory() as directory:
        store = SuppressionStore.open(directory, compact_after=3)
        try:
            for op in ops:
                if op[0] == "add":
                    batch = []
                    for scope, recipient, type_, source, description, now in op[1]:
                        entry = Entry.make(
                            recipient,
                            now=now,
                            scope=scope,
                            type=type_,
                            source=source,
                            description=description,
                        )
                        old = model.get(entry.key)
                        if old is not None:
                            entry = attrs.evolve(entry, created=old.created)
                        model[entry.key] = entry
                        batch.append(entry)
                    store.add(batch)
                elif op[0] == "remove":
                    assert store.remove(op[1], op[2]) == (
                        model.pop((op[1], op[2]), None) is not None
                    )
                elif op[0] == "compact":
                    store.compact()
                else:
                    store.close()
                    store = SuppressionStore.open(directory, compact_after=3)
                assert store.count() == len(model)
            store.close()
            store = SuppressionStore.open(directory)
            assert everything(store) == model
            assert store.count() == len(model)
            for scope in SCOPES:
                for recipient in RECIPIENTS:
                    assert store.lookup(recipient, (scope,)) == model.get((scope, recipient))
        finally:
            store.close()
