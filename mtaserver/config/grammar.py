"""The PowerMTA-style syntax: text to a tree of directives and scopes.

One directive a line (`name value...`), `#` comments, double-quoted values,
`<scope arg> ... </scope>` blocks that nest, and `include FILE` (relative to the
including file, shell globs allowed, cycles refused). The grammar knows nothing of
what directives mean; `load.py` checks them against the registry. Every node keeps
its `file` and `line` so each error can be reported as `FILE:LINE: message`, and
every error of a file is collected rather than stopping at the first.
"""

from __future__ import annotations

import glob
import os
import re

import attrs


@attrs.frozen
class Directive:
    name: str
    value: str
    file: str = attrs.field(default="", eq=False)
    line: int = attrs.field(default=0, eq=False)


@attrs.frozen
class Scope:
    name: str
    arg: str
    children: tuple[Directive | Scope, ...]
    file: str = attrs.field(default="", eq=False)
    line: int = attrs.field(default=0, eq=False)


Node = Directive | Scope


@attrs.frozen
class ConfigProblem:
    """One error in a config file, printed as `FILE:LINE: message`."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class ConfigError(Exception):
    """A config could not be loaded; `problems` lists every error found."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


_OPEN = re.compile(r"<\s*([^\s<>/][^\s<>]*)(?:\s+([^>]*?))?\s*>\s*$")
_CLOSE = re.compile(r"</\s*([^\s<>]+)\s*>\s*$")
#: A directive is its first word, whatever it is (`smtp-server-tls-allow-tlsv1.2`): the
#: loader then says "unknown directive 'x'" for a word it does not know, never "cannot parse".
_DIRECTIVE = re.compile(r"(\S+)(?:\s+(.*))?$")

#: Scopes whose lines are data, not directives: `<bounce-category-patterns>` holds
#: `/REGEX/ CATEGORY` lines. Each entry becomes a `pattern` directive; a line that does
#: not yet end in `/ CATEGORY` continues on the next (configs wrap long regexes).
RAW_SCOPES = frozenset({"bounce-category-patterns"})
RAW_ENTRY = "pattern"
_RAW_COMPLETE = re.compile(r"/.*/\s*[A-Za-z0-9_-]+", re.DOTALL)


def strip_comment(line: str) -> str:
    """Drop a `#` comment: at the start of a line, or after a space outside quotes."""
    in_quotes = False
    escaped = False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and in_quotes:
            escaped = True
        elif char == '"':
            in_quotes = not in_quotes
        elif char == "#" and not in_quotes and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def unquote(value: str) -> str:
    """A value wholly in double quotes loses them; `\\"` and `\\\\` inside are unescaped."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def quote(value: str) -> str:
    """The inverse of `unquote` for values that need it (render)."""
    if value == "" or re.search(r'(^\s|\s$|["#\\<>]|^$)', value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def parse_text(text: str, file: str, problems: list[ConfigProblem]) -> list[Node]:
    """Parse one file's text (without following includes)."""
    root: list[Node] = []
    stack: list[tuple[str, str, int, list[Node]]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = strip_comment(raw).strip()
        if not line:
            continue
        body = stack[-1][3] if stack else root
        if stack and stack[-1][0] in RAW_SCOPES and not line.startswith("</"):
            last = body[-1] if body else None
            if isinstance(last, Directive) and not _RAW_COMPLETE.fullmatch(last.value):
                body[-1] = attrs.evolve(last, value=last.value + line)
            else:
                body.append(Directive(RAW_ENTRY, line, file, number))
            continue
        if line.startswith("</"):
            closing = _CLOSE.match(line)
            if not closing:
                problems.append(ConfigProblem(file, number, f"malformed scope end {line!r}"))
            elif not stack:
                problems.append(
                    ConfigProblem(file, number, f"</{closing.group(1)}> without an open scope")
                )
            elif stack[-1][0] != closing.group(1).lower():
                problems.append(
                    ConfigProblem(
                        file,
                        number,
                        f"</{closing.group(1)}> closes <{stack[-1][0]}> opened at line "
                        f"{stack[-1][2]}",
                    )
                )
            else:
                name, arg, opened, children = stack.pop()
                scope = Scope(name, arg, tuple(children), file, opened)
                (stack[-1][3] if stack else root).append(scope)
            continue
        if line.startswith("<"):
            opening = _OPEN.match(line)
            if not opening:
                problems.append(ConfigProblem(file, number, f"malformed scope {line!r}"))
                continue
            arg = unquote((opening.group(2) or "").strip())
            stack.append((opening.group(1).lower(), arg, number, []))
            continue
        directive = _DIRECTIVE.match(line)
        if not directive:
            problems.append(ConfigProblem(file, number, f"cannot parse {line!r}"))
            continue
        value = unquote((directive.group(2) or "").strip())
        body.append(Directive(directive.group(1).lower(), value, file, number))
    for name, _arg, opened, _children in reversed(stack):
        problems.append(ConfigProblem(file, opened, f"<{name}> is not closed"))
    return root


def parse_file(
    path: str,
    problems: list[ConfigProblem],
    files: list[str] | None = None,
    _including: tuple[str, ...] = (),
) -> list[Node]:
    """Parse a file and, recursively, what it includes; `files` collects every file read."""
    real = os.path.realpath(path)
    if files is not None and real not in files:
        files.append(real)
    with open(path, encoding="utf-8") as stream:
        text = stream.read()
    nodes = parse_text(text, path, problems)
    return _expand_includes(nodes, path, problems, files, _including + (real,))


def _expand_includes(
    nodes: list[Node],
    path: str,
    problems: list[ConfigProblem],
    files: list[str] | None,
    including: tuple[str, ...],
) -> list[Node]:
    expanded: list[Node] = []
    for node in nodes:
        if isinstance(node, Scope):
            children = _expand_includes(list(node.children), path, problems, files, including)
            expanded.append(attrs.evolve(node, children=tuple(children)))
            continue
        if node.name != "include":
            expanded.append(node)
            continue
        pattern = os.path.join(os.path.dirname(path), node.value)
        targets = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not node.value:
            problems.append(ConfigProblem(node.file, node.line, "include needs a file name"))
            continue
        for target in targets:
            if os.path.realpath(target) in including:
                problems.append(
                    ConfigProblem(
                        node.file,
                        node.line,
                        f"include cycle: {node.value} includes a file that includes it",
                    )
                )
                continue
            try:
                expanded.extend(parse_file(target, problems, files, including))
            except OSError as exc:
                problems.append(
                    ConfigProblem(
                        node.file, node.line, f"cannot include {node.value}: {exc.strerror}"
                    )
                )
    return expanded


def render(nodes: list[Node] | tuple[Node, ...], indent: str = "") -> str:
    """The text form of a tree; `parse_text(render(t))` gives back `t`."""
    lines = []
    for node in nodes:
        if isinstance(node, Scope):
            arg = f" {quote(node.arg)}" if node.arg else ""
            lines.append(f"{indent}<{node.name}{arg}>")
            if node.name in RAW_SCOPES:
                inner = "".join(
                    f"{indent}    {c.value}\n" for c in node.children if isinstance(c, Directive)
                )
            else:
                inner = render(node.children, indent + "    ")
            if inner:
                lines.append(inner.rstrip("\n"))
            lines.append(f"{indent}</{node.name}>")
        else:
            value = f" {quote(node.value)}" if node.value else ""
            lines.append(f"{indent}{node.name}{value}")
    return "\n".join(lines) + ("\n" if lines else "")
