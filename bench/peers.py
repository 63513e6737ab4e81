"""The processes a benchmark talks to: smtp-sink, smtp-source, Postfix and mtaserver.

Every process here is started by the benchmark, on 127.0.0.1 only, and stopped by
it (by its own pid, never by name) in `finally` blocks and an atexit hook, so a
failed or interrupted run leaves nothing behind. Postfix runs from a private
config directory (`postfix -c DIR start`) with its queue under a temp dir: the
machine's /etc/postfix is never touched.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SBIN = Path("/usr/sbin")
POSTFIX_RELAY_CF = HERE / "postfix-relay.cf"

_live: list[subprocess.Popen[bytes]] = []
_postfixes: list[Path] = []


def _cleanup() -> None:
    for proc in list(_live):
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    for conf in list(_postfixes):
        subprocess.run([str(SBIN / "postfix"), "-c", str(conf), "stop"], capture_output=True)


atexit.register(_cleanup)


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # finally blocks and atexit run


signal.signal(signal.SIGTERM, _terminated)


def tool(name: str) -> str:
    path = shutil.which(name) or str(SBIN / name)
    if not os.access(path, os.X_OK):
        raise SystemExit(f"{name} not found: run `make system-deps` (Debian package postfix)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def wait_for_banner(port: int, timeout: float = 60.0) -> bool:
    """Wait until an SMTP server on `port` answers `220`: listening is not enough when
    reception workers take over sockets the master opened (the backlog fills until
    they run), and a timed run must not include their start-up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                if sock.makefile("rb").readline().startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def _spawn(cmd: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, **kwargs)  # type: ignore[call-overload]
    _live.append(proc)
    return proc


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if proc in _live:
        _live.remove(proc)


def descendants(root: int) -> set[int]:
    """`root` and every live process under it."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(raw[raw.rindex(")") + 2 :].split()[1])
    found = {root}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def _rss(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) * 1024 if match else 0


class Sink:
    """smtp-sink on a loopback port, counting messages ("." received) from its `-c` output."""

    _COUNT = re.compile(rb"mesg=(\d+)")

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.messages = 0
        self._changed = threading.Condition()
        # -c: counters on stdout; -u: smtp-sink refuses to run as root without it;
        # 1000 connections backlog so that neither MTA waits for the sink.
        self.proc = _spawn(
            [
                tool("smtp-sink"),
                "-u",
                "nobody",
                "-c",
                "-m",
                "1000",
                f"127.0.0.1:{self.port}",
                "1000",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not wait_for_port(self.port, 10):
            raise RuntimeError("smtp-sink did not listen")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            buf = (buf + chunk)[-4096:]
            counts = self._COUNT.findall(buf)
            if counts:
                with self._changed:
                    self.messages = int(counts[-1])
                    self._changed.notify_all()

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until the sink has counted `count` messages; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.messages < count:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return False
                self._changed.wait(min(left, 1.0))
        return True

    def stop(self) -> None:
        _stop(self.proc)


def smtp_source(
    port: int,
    *,
    sessions: int,
    messages: int,
    size: int,
    recipients: int = 1,
    timeout: float = 600,
) -> subprocess.CompletedProcess[bytes]:
    """Run smtp-source to completion (it exits when every message got its reply)."""
    cmd = source_command(
        port, sessions=sessions, messages=messages, size=size, recipients=recipients
    )
    return subprocess.run(cmd, capture_output=True, timeout=timeout)


def source_command(
    port: int, *, sessions: int, messages: int, size: int, recipients: int = 1
) -> list[str]:
    cmd = [
        tool("smtp-source"),
        "-s",
        str(sessions),
        "-m",
        str(messages),
        "-l",
        str(size),
        "-f",
        "bench@source.test",
        "-t",
        "rcpt@sink.test",
    ]
    if recipients > 1:
        # -r N sends N recipients per message, numbered N%rcpt@sink.test from -t.
        cmd += ["-r", str(recipients)]
    return [*cmd, f"127.0.0.1:{port}"]


class Postfix:
    """Postfix from a private config dir: main.cf from bench/postfix-relay.cf, own queue."""

    def __init__(self, workdir: Path, sink_port: int, *, rcpt_limit: int = 1000) -> None:
        self.port = free_port()
        self.conf = workdir / "postfix-etc"
        self.conf.mkdir(parents=True)
        self.queue = workdir / "postfix-queue"
        self.queue.mkdir()
        workdir.chmod(0o755)  # the postfix user reaches data_directory by its path
        data = workdir / "postfix-data"
        data.mkdir()
        shutil.chown(data, "postfix", "postfix")
        self.log = workdir / "postfix.log"
        main = POSTFIX_RELAY_CF.read_text()
        main = main.replace("relayhost = [127.0.0.1]:2526", f"relayhost = [127.0.0.1]:{sink_port}")
        main = re.sub(r"(?m)^maillog_file = .*$", f"maillog_file = {self.log}", main)
        main += (
            f"\n# Private instance of the benchmark (bench/peers.py)\n"
            f"queue_directory = {self.queue}\n"
            f"data_directory = {data}\n"
            f"smtp_destination_recipient_limit = {rcpt_limit}\n"
            f"maillog_file_prefixes = {workdir}\n"
        )
        (self.conf / "main.cf").write_text(main)
        (self.conf / "master.cf").write_text(self._master_cf())
        for name in ("dynamicmaps.cf", "postfix-files"):
            if (Path("/etc/postfix") / name).exists():
                shutil.copy(Path("/etc/postfix") / name, self.conf / name)
        for name in ("dynamicmaps.cf.d", "postfix-files.d"):
            if (Path("/etc/postfix") / name).is_dir():
                shutil.copytree(Path("/etc/postfix") / name, self.conf / name)

    def _master_cf(self) -> str:
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            fields = line.split()
            if fields and not line.startswith((" ", "\t", "#")) and len(fields) >= 8:
                if fields[0] == "smtp" and fields[1] == "inet":
                    fields[0] = f"127.0.0.1:{self.port}"
                fields[4] = "n"  # no chroot: the queue is a private temp dir
                line = "  ".join(fields)
            lines.append(line)
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        _postfixes.append(self.conf)
        out = subprocess.run(
            [tool("postfix"), "-c", str(self.conf), "start"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0 or not wait_for_port(self.port, 30):
            raise RuntimeError(f"postfix did not start: {out.stdout}{out.stderr}")

    def queue_empty(self) -> bool:
        for sub in ("incoming", "active", "deferred", "maildrop", "hold"):
            for _dir, _subdirs, files in os.walk(self.queue / sub):
                if files:
                    return False
        return True

    def stop(self) -> None:
        """`postfix stop`, then wait until its master process is gone: `stop` only
        signals it, and a run started meanwhile would share the cores with its exit."""
        master = self._master_pid()
        subprocess.run(
            [tool("postfix"), "-c", str(self.conf), "stop"], capture_output=True, timeout=60
        )
        if master is not None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and os.path.exists(f"/proc/{master}"):
                time.sleep(0.05)
        if self.conf in _postfixes:
            _postfixes.remove(self.conf)

    def _master_pid(self) -> int | None:
        try:
            return int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


#: `reception-workers` in every mtaserver config the benchmark writes (`--workers`);
#: None writes nothing (the server's default).
RECEPTION_WORKERS: str | None = None

API_KEY = "bench_0123456789_0123456789_0123456789"

MTASERVER_CONF = """\
# mtaserver for the benchmark (written by bench/peers.py)
host-name bench.localdomain
postmaster postmaster@bench.localdomain
spool {spool}
smtp-listener 127.0.0.1:{port}

<source 127.0.0.1>
    always-allow-relaying yes
    max-rcpt-per-message 1000
</source>

<transmissions-api-listener 127.0.0.1:{api_port}>
</transmissions-api-listener>

<transmissions-api>
    api-key {api_key}
    max-request-size 10M
</transmissions-api>

<acct-file {acct}>
    records {acct_records}
{webhook}</acct-file>

<domain *>
    smtp-hosts [127.0.0.1]:{sink_port}
    max-smtp-out 20
    max-msg-per-connection 1000
    max-rcpt-per-transaction 1000
    use-starttls no
    retry-after {retry_after}
</domain>
"""


class MtaServer:
    """`twistd -n mtaserver -c FILE` on a temp spool, like tests/server_process.py."""

    def __init__(
        self,
        workdir: Path,
        sink_port: int,
        *,
        retry_after: str = "10m",
        spool: Path | None = None,
        webhook_url: str | None = None,
        twistd_args: list[str] | None = None,
        extra_config: str = "",
        pythonpath: str | None = None,
    ) -> None:
        #: Run the mtaserver found here instead of the importing tree's (`cpu.py --compare`).
        self.pythonpath = pythonpath
        self.workdir = workdir
        self.twistd_args = twistd_args or []
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.api_port = free_port()
        self.spool = spool or workdir / "spool"
        self.config = workdir / "mtaserver.conf"
        self.config.write_text(
            MTASERVER_CONF.format(
                spool=self.spool,
                port=self.port,
                acct=workdir / "acct.csv",
                sink_port=sink_port,
                retry_after=retry_after,
                api_port=self.api_port,
                api_key=API_KEY,
                acct_records="r,d,b" if webhook_url else "d,b",
                webhook=(
                    f"    http-webhook-url {webhook_url}\n    http-webhook-max-interval 1s\n"
                    if webhook_url
                    else ""
                ),
            )
            + extra_config
            + ("http-webhook-allow-addresses 127.0.0.1/32\n" if webhook_url else "")
            + (f"reception-workers {RECEPTION_WORKERS}\n" if RECEPTION_WORKERS is not None else "")
        )
        self.log = workdir / "twistd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "--logfile",
            str(self.log),
            *self.twistd_args,
            "mtaserver",
            "-c",
            str(self.config),
        ]

    def start(self, timeout: float = 120) -> float:
        """Start and wait for the SMTP port; returns the seconds it took."""
        started = time.monotonic()
        self.proc = _spawn(
            self.command(),
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=dict(
                os.environ,
                PYTHONUNBUFFERED="1",
                **({"PYTHONPATH": self.pythonpath} if self.pythonpath else {}),
            ),
        )
        if not wait_for_port(self.port, timeout) or not wait_for_banner(self.port, timeout):
            self.stop()
            raise RuntimeError(f"mtaserver did not listen:\n{self.read_log()[-3000:]}")
        return time.monotonic() - started

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def read_log(self) -> str:
        """The log, rotated parts (twistd rotates at 1 MB) first, oldest first."""
        rotated = sorted(
            self.workdir.glob(self.log.name + ".*"),
            key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0,
            reverse=True,
        )
        return "".join(p.read_text(errors="replace") for p in [*rotated, self.log] if p.exists())

    def clear_log(self) -> None:
        """Forget the log so far (before a restart whose log lines are awaited)."""
        for path in self.workdir.glob(self.log.name + ".*"):
            path.unlink()
        self.log.write_text("")

    def rss_bytes(self) -> int:
        """VmRSS of the server and every process under it (reception workers)."""
        return sum(_rss(pid) for pid in descendants(self.pid))

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, signal.SIGTERM, timeout=60)
            self.proc = None

    def kill9(self) -> None:
        if self.proc is not None:
            _stop(self.proc, signal.SIGKILL)
            self.proc = None


RECEIVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.records += body.count(b"\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
s.records = 0
print(s.server_address[1], flush=True)
s.serve_forever()
"""


class WebhookReceiver:
    """An HTTP endpoint on 127.0.0.1 that answers every POST with 200 (P3)."""

    def __init__(self) -> None:
        self.proc = _spawn([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}/acct"

    def stop(self) -> None:
        _stop(self.proc)
