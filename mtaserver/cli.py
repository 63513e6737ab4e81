"""`mtactl`: the operator's command line, a thin client of `POST /command`.

    mtactl [--url URL] [--api-key KEY] [--json] show status
    mtactl pause queue example.com/vmta1
    mtactl pause job spring-sale
    MTACTL_URL=http://127.0.0.1:8080 MTACTL_API_KEY=... mtactl show queues --json

The command language lives in `mtaserver.commands` and runs on the server; mtactl
sends the words it was given and prints the server's text table (`format=json-text`)
or, with `--json`, the whole JSON reply for scripts. The exit status is 0 on
success, 1 when the server reports an error, 2 when it cannot be reached or answers
something that is not the command API. Blocking urllib is fine here.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from mtaserver import __version__

DEFAULT_URL = "http://127.0.0.1:8080"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtactl",
        description="Run a command on a running mtaserver through its management port.",
        epilog="commands: show status|queues [--paused]|domains|vmtas|jobs|settings|version; "
        "pause queue D/V; resume queue D/V; pause job JOBID; resume job JOBID; schedule D/V; "
        "set queue --mode=backoff|normal D/V; delete --queue=D/V [--jobId=J]; "
        "list --queue=D/V [--max=N]; reload; test config [FILE]; rotate acct; rotate log; "
        "reset counters; "
        "suppression add|remove|show RECIPIENT [--scope=S]; suppression import FILE; "
        "suppression export",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("MTACTL_URL", DEFAULT_URL),
        help="the management port's URL (default $MTACTL_URL or %(default)s)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("MTACTL_API_KEY"),
        help="sent as X-API-Key (default $MTACTL_API_KEY)",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON reply")
    parser.add_argument("--version", action="version", version=f"mtactl {__version__}")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    return parser


def send(
    url: str,
    command: str,
    fmt: str,
    api_key: str | None,
    timeout: float,
    input_text: str | None = None,
) -> Any:
    """POST the command (and its bulk input); the decoded JSON reply (errors included)."""
    fields = {"command": command, "format": fmt}
    if input_text is not None:
        fields["input"] = input_text
    body = urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(
        url.rstrip("/") + "/command",
        data=body,
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    if api_key:
        request.add_header("X-API-Key", api_key)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        data = error.read()
        try:
            return json.loads(data)
        except ValueError:
            raise ConnectionError(f"HTTP {error.code} from {url}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    words = list(args.command)
    # options for mtactl itself may also follow the command (`show queues --json`)
    if "--json" in words:
        words.remove("--json")
        args.json = True
    if not words:
        print("mtactl: no command given (try: mtactl show status)", file=sys.stderr)
        return 2
    input_text = None
    if [w.lower() for w in words[:2]] == ["suppression", "import"]:
        # the CSV is read here and sent as the command's input: the file is the operator's
        files = [w for w in words[2:] if not w.startswith("--")]
        if len(files) != 1:
            print("mtactl: usage: suppression import FILE [--scope=SCOPE]", file=sys.stderr)
            return 2
        try:
            with open(files[0], encoding="utf-8-sig", newline="") as f:
                input_text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"mtactl: cannot read {files[0]}: {exc}", file=sys.stderr)
            return 2
        words = [w for w in words if w != files[0]]
    command = shlex.join(words)
    try:
        reply = send(
            args.url,
            command,
            "json" if args.json else "json-text",
            args.api_key,
            args.timeout,
            input_text,
        )
    except (OSError, ConnectionError, ValueError) as exc:
        print(f"mtactl: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(reply, dict) or "status" not in reply:
        print(f"mtactl: unexpected reply from {args.url}", file=sys.stderr)
        return 2
    ok = reply["status"] == "success"
    if args.json:
        print(json.dumps(reply, indent=2))
    elif ok:
        data = reply.get("data")
        print(data if isinstance(data, str) else json.dumps(data, indent=2))
    else:
        print(f"mtactl: {reply.get('message', 'error')}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
