"""The mail log (`log-file`) against the real server: sessions, failures, DNS, rotation.

Each test starts `twistd -n mtaserver` on a config with a `log-file`, talks to it with
smtplib or a raw socket (and to a loopback aiosmtpd receiver and DNS server for
deliveries), and reads the log file back.
"""

from __future__ import annotations

import base64
import re
import smtplib
import socket
import subprocess
from pathlib import Path

from dns_server import start_dns_server_in_thread
from mgmt_client import run_mtactl
from mx_receiver import Receiver
from server_configs import DISCARD, domain, relay_config
from server_process import ServerProcess, free_port, wait_until

PASSWORD = "Pa55-w0rd-never-logged"
API_KEY = "maillog-admin-key"
#: Every line of the log: a UTC timestamp, a tag, text; nothing else, ever.
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \[[a-z0-9 ]+\] [\x20-\x7e\u00a0-\uffff]*")


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


def lines(path: Path) -> list[str]:
    return read(path).splitlines()


def assert_well_formed(path: Path) -> None:
    data = path.read_bytes()
    assert b"\r" not in data and b"\x1b" not in data and b"\x00" not in data
    for line in data.decode("utf-8").splitlines():
        assert LINE.fullmatch(line), line


def session(text: str, marker: str) -> str:
    """The lines of the session (tag) whose line holds `marker`, tags and times cut."""
    tag = next(re.search(r"\[[^]]+\]", ln).group(0) for ln in text.splitlines() if marker in ln)
    return "\n".join(ln.split(tag + " ", 1)[1] for ln in text.splitlines() if tag in ln)


def mtactl(mgmt: int, *args: str) -> subprocess.CompletedProcess[str]:
    return run_mtactl("--url", f"http://127.0.0.1:{mgmt}", "--api-key", API_KEY, *args)


def test_received_session_transcript_with_auth_masked(tmp_path: Path) -> None:
    """log-connections/commands/data show a session; AUTH PLAIN and LOGIN secrets never."""
    port = free_port()
    log_file = tmp_path / "log" / "mail.log"
    conf = relay_config(
        tmp_path,
        port,
        DISCARD,
        f"<smtp-user alice>\n  password {PASSWORD}\n</smtp-user>\n",
        settings=f"log-file {log_file}",
        source="log-connections yes\nlog-commands yes\nlog-data yes\n"
        "allow-unencrypted-plain-auth yes",
    )
    with ServerProcess(tmp_path, conf, wait_ports=(port,)) as server:
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.login("alice", PASSWORD)  # AUTH PLAIN with an initial response
            client.sendmail(
                "a@src.test", ["r@dst.test"], b"Subject: hello log\r\nX-Tag: one\r\n\r\nbody\r\n"
            )
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.ehlo("login.client")
            assert client.docmd("AUTH LOGIN")[0] == 334
            assert client.docmd(base64.b64encode(b"alice").decode())[0] == 334
            assert client.docmd(base64.b64encode(PASSWORD.encode()).decode())[0] == 235
        assert wait_until(lambda: read(log_file).count("closed") >= 2)
        service_log = server.read_log()
    text = read(log_file)
    assert_well_formed(log_file)
    plain = session(text, "AUTH PLAIN")
    assert re.match(r"connection from 127\.0\.0\.1:\d+ to 127\.0\.0\.1:\d+\n<<< 220 ", plain)
    assert ">>> ehlo " in plain
    assert "<<< 250 AUTH PLAIN LOGIN" in plain
    assert ">>> AUTH PLAIN ********\nauthenticated as alice\n<<< 235 " in plain
    assert ">>> mail FROM:<a@src.test>" in plain
    assert "<<< 354 " in plain
    assert "data >>> Subject: hello log\ndata >>> X-Tag: one\n<<< 250 2.0.0 Ok" in plain
    assert "body" not in plain  # log-data shows the header block only
    assert plain.endswith(">>> QUIT\n<<< 221 2.0.0 Bye\nclosed")
    login = session(text, "AUTH LOGIN")
    assert (
        ">>> AUTH LOGIN\n<<< 334 VXNlcm5hbWU6\n>>> ********\n<<< 334 UGFzc3dvcmQ6\n>>> ********"
        in login
    )
    secrets = [
        PASSWORD,
        base64.b64encode(PASSWORD.encode()).decode(),
        base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode(),
    ]
    for secret in secrets:
        assert secret not in text
        assert secret not in service_log
    # the service log is not the mail log: no transcript there
    assert ">>> EHLO" not in service_log


def test_delivery_failure_and_mx_lookup_are_logged(tmp_path: Path, receiver: Receiver) -> None:
    """log-resolution shows the MX answer, log-transfer-failures the remote's 550 reply."""
    records = {
        "dst.test": [("MX", 10, "mx1.dst.test")],
        "mx1.dst.test": [("A", "127.0.0.1")],
    }
    dns_port, stop_dns = start_dns_server_in_thread(records)
    port = free_port()
    log_file = tmp_path / "mail.log"
    conf = relay_config(
        tmp_path,
        port,
        domain(
            f"default-smtp-port {receiver.port}\nmx-allow-private-addresses yes\n"
            "log-resolution yes\nlog-transfer-failures yes\nlog-commands yes\n"
            "log-connections yes\nbounce-after 1h\nretry-after 1h",
            "dst.test",
        ),
        settings=f"log-file {log_file}\nname-server 127.0.0.1:{dns_port}",
    )
    try:
        with ServerProcess(tmp_path, conf, wait_ports=(port,)):
            with smtplib.SMTP("127.0.0.1", port) as client:
                client.sendmail(
                    "s@src.test", ["hard-user@dst.test", "ok@dst.test"], b"Subject: x\r\n\r\nx\r\n"
                )
            assert wait_until(lambda: "transfer failure" in read(log_file))
            assert wait_until(lambda: "] closed" in read(log_file))
    finally:
        stop_dns()
    text = read(log_file)
    assert_well_formed(log_file)
    assert f"resolved dst.test: 10 mx1.dst.test [127.0.0.1]:{receiver.port}" in text
    assert f"connecting to mx1.dst.test [127.0.0.1]:{receiver.port} for dst.test/" in text
    out = session(text, "transfer failure")
    assert re.search(
        r"^transfer failure dst\.test/\S+ <hard-user@dst\.test>: 550 5\.1\.1 no such user$",
        out,
        re.M,
    )
    assert "transfer failure dst.test" in out and "<ok@dst.test>:" not in out
    assert "<<< RCPT TO:<hard-user@dst.test>" in out
    assert ">>> 550 5.1.1 no such user" in out
    assert re.search(r"<<< \[message body, \d+ bytes\]\n>>> 250 ", out)
    assert re.search(r"<<< QUIT\n>>> 221 .*\nclosed$", out)


def test_peer_control_characters_never_forge_a_line(tmp_path: Path) -> None:
    """CR, LF, ESC and NUL in a client's command are escaped: one line per event, always."""
    port = free_port()
    log_file = tmp_path / "mail.log"
    conf = relay_config(
        tmp_path, port, DISCARD, settings=f"log-file {log_file}", source="log-commands yes"
    )
    forged = b"2026-01-01 00:00:00.000 [in 9] authenticated as root"
    with ServerProcess(tmp_path, conf, wait_ports=(port,)):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.recv(1024)
            sock.sendall(b"EHLO x\r\n")
            sock.sendall(b"NOOP a\r" + forged + b"\r\n")
            sock.sendall(b"NOOP b\n" + forged + b"\r\n")
            sock.sendall(b"NOOP \x1b[2J\x1b]0;owned\x07 \x00 \xff \xe2\x80\xae end\r\n")
            sock.sendall(b"QUIT\r\n")
            while sock.recv(4096):
                pass
        assert wait_until(lambda: "QUIT" in read(log_file))
    assert_well_formed(log_file)
    text = read(log_file)
    assert not any(line.startswith("2026-01-01") for line in text.splitlines())
    assert ">>> NOOP a\\r2026-01-01 00:00:00.000 [in 9] authenticated as root\n" in text
    assert ">>> NOOP b\\n2026-01-01" in text
    assert ">>> NOOP \\x1b[2J\\x1b]0;owned\\x07 \\x00 \\xff \\u202e end" in text


def test_switches_off_log_nothing_of_that_kind(tmp_path: Path, receiver: Receiver) -> None:
    """With every log-* switch off, sessions and failures leave the log file empty."""
    port = free_port()
    log_file = tmp_path / "mail.log"
    conf = relay_config(
        tmp_path,
        port,
        domain(f"smtp-hosts [127.0.0.1]:{receiver.port}\nretry-after 1h", "dst.test"),
        settings=f"log-file {log_file}",
        source="log-connections no\nlog-commands no\nlog-data no\nlog-tls no",
    )
    with ServerProcess(tmp_path, conf, wait_ports=(port,)):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("s@src.test", ["hard-user@dst.test"], b"Subject: x\r\n\r\nx\r\n")
        assert wait_until(lambda: any(m == "RCPT" for m in receiver.commands))
        assert wait_until(lambda: "QUIT" in receiver.commands)
    assert log_file.exists()  # opened at start
    assert read(log_file) == ""


def test_rotate_log_command_and_size_rotation_keep_n_files(tmp_path: Path) -> None:
    """`mtactl rotate log` rotates; log-max-size rotates too; log-rotate 3 keeps 3 files."""
    port, mgmt = free_port(), free_port()
    log_file = tmp_path / "mail.log"
    conf = relay_config(
        tmp_path,
        port,
        DISCARD,
        settings=f"log-file {log_file}\nlog-rotate 3\nlog-max-size 2K\n"
        f"http-mgmt-port 127.0.0.1:{mgmt}\nhttp-api-key {API_KEY}",
        source="log-connections yes\nlog-commands yes",
    )
    with ServerProcess(tmp_path, conf, wait_ports=(port, mgmt)):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.noop()
        assert wait_until(lambda: "closed" in read(log_file))
        before = read(log_file)
        result = mtactl(mgmt, "rotate", "log")
        assert result.returncode == 0, result.stderr
        assert "Logging file rotated." in result.stdout
        assert read(Path(f"{log_file}.1")) == before
        assert before.splitlines()[-1] not in read(log_file)
        # now grow past 2K several times: sessions of ~1K each
        for _ in range(12):
            with smtplib.SMTP("127.0.0.1", port) as client:
                for _ in range(6):
                    client.noop()
        assert wait_until(lambda: Path(f"{log_file}.2").exists())
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("mail.log"))
    assert names == ["mail.log", "mail.log.1", "mail.log.2"]
    for name in names:
        assert_well_formed(tmp_path / name)


def test_unusable_log_file_stops_the_start_saying_why(tmp_path: Path) -> None:
    """A log-file that cannot be opened (here a directory) refuses to start, naming it."""
    port = free_port()
    (tmp_path / "adir").mkdir()
    conf = relay_config(tmp_path, port, DISCARD, settings=f"log-file {tmp_path / 'adir'}")
    server = ServerProcess(tmp_path, conf)
    result = subprocess.run(server.command(), cwd=tmp_path, capture_output=True, timeout=60)
    assert result.returncode != 0
    output = (result.stdout + result.stderr).decode() + server.read_log()
    assert f"log-file {tmp_path / 'adir'}: Is a directory; not started" in output


def test_reception_workers_append_to_the_same_log_and_follow_rotation(tmp_path: Path) -> None:
    """With reception-workers, workers' sessions land whole in the log, also after rotate."""
    port, mgmt = free_port(), free_port()
    log_file = tmp_path / "mail.log"
    conf = relay_config(
        tmp_path,
        port,
        DISCARD,
        settings=f"reception-workers 2\nlog-file {log_file}\n"
        f"http-mgmt-port 127.0.0.1:{mgmt}\nhttp-api-key {API_KEY}",
        source="log-connections yes\nlog-commands yes",
    )

    def sessions(count: int, mark: str) -> None:
        for n in range(count):
            with smtplib.SMTP("127.0.0.1", port) as client:
                client.sendmail(f"{mark}{n}@src.test", ["r@dst.test"], b"Subject: x\r\n\r\nx\r\n")

    with ServerProcess(tmp_path, conf, wait_ports=(port, mgmt)):
        sessions(6, "first")
        assert wait_until(lambda: read(log_file).count("mail FROM:<first") == 6)
        assert mtactl(mgmt, "rotate", "log").returncode == 0
        sessions(6, "second")
        assert wait_until(lambda: read(log_file).count("mail FROM:<second") == 6)
    old, new = read(Path(f"{log_file}.1")), read(log_file)
    assert old.count("mail FROM:<first") == 6 and "mail FROM:<second" not in old
    assert "mail FROM:<first" not in new
    assert re.search(r"\[w[12] in \d+\] >>> mail FROM:<second", new)
    for path in (log_file, Path(f"{log_file}.1")):
        assert_well_formed(path)
