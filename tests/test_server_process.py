"""The test harness's own promises: free ports outside the ephemeral range, EADDRINUSE retried."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from server_process import ServerProcess, free_port, wait_until


def test_free_port_is_below_the_ephemeral_range_and_never_repeats() -> None:
    """No client socket can be given a picked port: it lies below ip_local_port_range."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as stream:
        low = int(stream.read().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(1024 <= port < low for port in ports)


def test_a_port_taken_at_start_is_tried_again(tmp_path: Path) -> None:
    """The listener finds its port taken (EADDRINUSE); once it is free the retry listens."""
    port = free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))  # bound, not listening: connections are refused
    process = ServerProcess(
        tmp_path, f"spool {tmp_path}/spool\nsmtp-listener 127.0.0.1:{port}\n", wait_ports=(port,)
    )

    def release_after_the_first_refusal() -> None:
        wait_until(lambda: "Address already in use" in process.read_log(), timeout=60)
        holder.close()

    releaser = threading.Thread(target=release_after_the_first_refusal)
    releaser.start()
    try:
        process.start()
        assert "Address already in use" in process.read_log()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            assert client.recv(100).startswith(b"220 ")
    finally:
        process.stop()
        releaser.join(60)
        holder.close()
