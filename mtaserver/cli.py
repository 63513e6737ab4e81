"""`mtactl`: the operator's command line, a thin client of `POST /command`.

    mtactl [--url URL] [--api-key KEY] [--json|--xml|--dom] show status
    mtactl show topqueues --maxitems=10
    mtactl pause queue example.com/vmta1
    mtactl trace --timeout=60 example.com
    MTACTL_URL=http://127.0.0.1:8080 MTACTL_API_KEY=... mtactl show queues --json
    source <(mtactl completion bash)        # tab completion of commands and options

The command language lives in `mtaserver.commands` and runs on the server; mtactl
sends the words it was given and prints the server's text table (`format=json-text`,
PowerMTA's tables where `pmta` has one), or, with `--json`, the whole JSON reply for
scripts (PowerMTA's `{"data":...,"status":...,"message":...}`), with `--xml` PowerMTA's
`<rsp>` document, or with `--dom` the data as `name="value"` lines (pmta's `--dom`).
The exit status is 0 on success, 1 when the server reports an error, 2 when it cannot
be reached or answers something that is not the command API. `mtactl completion
bash|zsh` prints a completion script built from the command grammar (nothing is asked
of a server). Blocking urllib is fine here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from mtaserver import __version__
from mtaserver.commands.grammar import SPECS, find_spec

DEFAULT_URL = "http://127.0.0.1:8080"
#: mtactl's own options (they may also follow the command).
OWN_OPTIONS = (
    "--url=",
    "--api-key=",
    "--json",
    "--xml",
    "--dom",
    "--timeout=",
    "--help",
    "--version",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtactl",
        description="Run a command on a running mtaserver through its management port.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n  "
        + "\n  ".join(spec.usage for spec in SPECS)
        + "\n  completion bash|zsh   (a shell completion script)",
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
    parser.add_argument("--dom", action="store_true", help='print the data as name="value"')
    parser.add_argument("--xml", action="store_true", help="print PowerMTA's XML reply")
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
            data = response.read()
    except urllib.error.HTTPError as error:
        data = error.read()
        if fmt == "xml" and data.startswith(b"<"):
            return data.decode("utf-8", "replace")
        try:
            return json.loads(data)
        except ValueError:
            raise ConnectionError(f"HTTP {error.code} from {url}") from None
    if fmt == "xml":  # PowerMTA's `<rsp>` document, printed as it came
        return data.decode("utf-8", "replace")
    return json.loads(data)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    words = list(args.command)
    # options for mtactl itself may also follow the command (`show queues --json`)
    for flag in ("--json", "--dom", "--xml"):
        if flag in words:
            words.remove(flag)
            setattr(args, flag[2:], True)
    if not words:
        print("mtactl: no command given (try: mtactl show status)", file=sys.stderr)
        return 2
    if words[0] == "completion":
        shell = words[1] if len(words) == 2 else ""
        if shell not in ("bash", "zsh"):
            print("mtactl: usage: mtactl completion bash|zsh", file=sys.stderr)
            return 2
        print(completion_script(shell))
        return 0
    timeout = args.timeout
    spec = find_spec(words)
    if spec is not None and spec.words == ("trace",):
        # the server waits up to --timeout for the traced session: wait longer than it
        given = [w.partition("=")[2] for w in words if w.startswith("--timeout=")]
        wait = int(given[0]) if given and given[0].isdigit() else 25
        timeout = max(timeout, wait + 15.0)
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
            "xml" if args.xml else "json" if args.json or args.dom else "json-text",
            args.api_key,
            timeout,
            input_text,
        )
    except (OSError, ConnectionError, ValueError) as exc:
        print(f"mtactl: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
    if args.xml and isinstance(reply, str):
        print(reply)
        return 0 if re.search(r"<succ\s*/>", reply) else 1
    if not isinstance(reply, dict) or "status" not in reply:
        print(f"mtactl: unexpected reply from {args.url}", file=sys.stderr)
        return 2
    ok = reply["status"] == "success"
    if args.json:
        print(json.dumps(reply, indent=2))
    elif args.dom and ok:
        for name, value in dom_lines(reply.get("data")):
            print(f"{name}={json.dumps(value)}")
    elif ok:
        data = reply.get("data")
        print(data if isinstance(data, str) else json.dumps(data, indent=2))
    else:
        print(f"mtactl: {reply.get('message', 'error')}", file=sys.stderr)
    return 0 if ok else 1


def dom_lines(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """pmta's `--dom`: `status.queue.rcp="3"`, `host[0].ip[1]="..."`, one value a line."""
    if isinstance(data, dict):
        lines = []
        for key, value in data.items():
            lines += dom_lines(value, f"{prefix}.{key}" if prefix else str(key))
        return lines
    if isinstance(data, list):
        lines = []
        for index, value in enumerate(data):
            lines += dom_lines(value, f"{prefix}[{index}]")
        return lines
    return [(prefix or "data", "" if data is None else str(data))]


def completion_script(shell: str) -> str:
    """A bash completion function for mtactl, from the command grammar (zsh: through
    bashcompinit): command words, then the command's options, then mtactl's own."""
    prefixes: dict[str, set[str]] = {}
    commands: dict[str, list[str]] = {}
    for spec in SPECS:
        for depth in range(len(spec.words)):
            prefixes.setdefault(" ".join(spec.words[:depth]), set()).add(spec.words[depth])
        commands[" ".join(spec.words)] = [
            f"--{name}" if kind == "flag" else f"--{name}="
            for name, kind in sorted(spec.options.items())
        ]
    prefixes.setdefault("", set()).add("completion")
    prefixes["completion"] = {"bash", "zsh"}
    cases = [
        f'        "{line}") words="{" ".join(sorted(nexts))}";;'
        for line, nexts in sorted(prefixes.items())
    ]
    cases += [
        f'        "{line}"|"{line} "*) words="{" ".join(options)}";;'
        for line, options in sorted(commands.items(), key=lambda item: -len(item[0]))
        if line not in prefixes
    ]
    script = f"""# mtactl completion ({shell}); load with: source <(mtactl completion {shell})
_mtactl() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" words="" line="" i w
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        case "$w" in
            --url|--api-key|--timeout) ((i++));;
            -*|=) ;;
            *) line="${{line:+$line }}$w";;
        esac
    done
    case "$line" in
{chr(10).join(cases)}
    esac
    if [[ "$cur" == -* ]]; then
        words="$words {' '.join(OWN_OPTIONS)}"
    fi
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
    if [[ ${{#COMPREPLY[@]}} -eq 1 && "${{COMPREPLY[0]}}" == *= ]]; then
        compopt -o nospace 2>/dev/null
    fi
    return 0
}}
complete -F _mtactl mtactl"""
    if shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
