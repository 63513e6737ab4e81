"""The config grammar: text to tree, round trips, comments, quotes, includes, errors."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from mtaserver.config.grammar import (
    ConfigProblem,
    Directive,
    Node,
    Scope,
    parse_file,
    parse_text,
    render,
    strip_comment,
)

names = st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True).filter(lambda n: n != "include")
values = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="<>"
    ),
    max_size=30,
)
args = st.from_regex(r"[A-Za-z0-9*{}./:_-]{0,20}", fullmatch=True)


def trees(depth: int = 2) -> st.SearchStrategy[list[Node]]:
    directive = st.builds(Directive, names, values)
    if depth == 0:
        return st.lists(directive, max_size=5)
    scope = st.builds(
        lambda n, a, c: Scope(n, a, tuple(c)), names, args, st.deferred(lambda: trees(depth - 1))
    )
    return st.lists(st.one_of(directive, scope), max_size=5)


def parse(text: str) -> tuple[list[Node], list[ConfigProblem]]:
    problems: list[ConfigProblem] = []
    return parse_text(text, "t.conf", problems), problems


@given(trees())
def test_render_then_parse_is_identity(tree: list[Node]) -> None:
    """Any tree rendered to text parses back to the same tree."""
    stripped = [_strip(n) for n in tree]
    parsed, problems = parse(render(stripped))
    assert problems == []
    assert parsed == stripped


def _strip(node: Node) -> Node:
    if isinstance(node, Scope):
        return Scope(node.name, node.arg.strip(), tuple(_strip(c) for c in node.children))
    return Directive(node.name, node.value.strip())


def test_comments_and_blank_lines_are_ignored() -> None:
    """Full-line and trailing comments vanish; a # inside a word or quotes stays."""
    tree, problems = parse(
        "# a comment\n\nhost-name mx.example.com   # trailing\n"
        'password "a # b"\nbind-password ab#cd\n'
    )
    assert problems == []
    assert tree == [
        Directive("host-name", "mx.example.com"),
        Directive("password", "a # b"),
        Directive("bind-password", "ab#cd"),
    ]


def test_escaped_quote_does_not_end_quotes() -> None:
    """A backslash-escaped quote inside quotes keeps a later # as text."""
    assert strip_comment(r'password "a\" # b"') == r'password "a\" # b"'


def test_scopes_nest_and_keep_line_numbers() -> None:
    """Scopes nest and each node knows its line."""
    tree, problems = parse(
        "<virtual-mta v1>\n  <domain x.com>\n    max-smtp-out 2\n  </domain>\n</virtual-mta>\n"
    )
    assert problems == []
    (vmta,) = tree
    assert isinstance(vmta, Scope) and vmta.line == 1 and vmta.arg == "v1"
    (domain,) = vmta.children
    assert isinstance(domain, Scope) and domain.line == 2
    assert domain.children[0].line == 3


def test_unclosed_and_mismatched_scopes_are_reported_with_lines() -> None:
    """An unclosed scope, a wrong closer and a stray closer each name their line."""
    _, problems = parse("<domain a>\n</source>\n</domain>\n</domain>\n<source 1.2.3.4>\n")
    messages = [str(p) for p in problems]
    assert "t.conf:2: </source> closes <domain> opened at line 1" in messages
    assert "t.conf:4: </domain> without an open scope" in messages
    assert "t.conf:5: <source> is not closed" in messages


def test_malformed_lines_are_reported() -> None:
    """A malformed scope is an error, and parsing goes on; any other line is a directive."""
    nodes, problems = parse("<domain\n= 3\nhost-name ok\n")
    assert [p.line for p in problems] == [1]
    assert [(n.name, n.value) for n in nodes if isinstance(n, Directive)] == [
        ("=", "3"),
        ("host-name", "ok"),
    ]


def test_include_is_relative_and_keeps_file_and_line(tmp_path: Path) -> None:
    """An included file's nodes carry that file's name and line numbers."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "domains.conf").write_text(
        "\n\n<domain a.com>\nmax-smtp-out 3\n</domain>\n"
    )
    main = tmp_path / "main.conf"
    main.write_text("host-name a\ninclude sub/domains.conf\n")
    problems: list[ConfigProblem] = []
    files: list[str] = []
    tree = parse_file(str(main), problems, files)
    assert problems == []
    scope = tree[1]
    assert isinstance(scope, Scope)
    assert scope.file.endswith("sub/domains.conf") and scope.line == 3
    assert scope.children[0].line == 4
    assert len(files) == 2


def test_include_glob_reads_every_match_in_order(tmp_path: Path) -> None:
    """`include conf.d/*.conf` reads the matching files sorted by name."""
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "b.conf").write_text("postmaster b@x.y\n")
    (tmp_path / "conf.d" / "a.conf").write_text("host-name a\n")
    main = tmp_path / "main.conf"
    main.write_text("include conf.d/*.conf\n")
    problems: list[ConfigProblem] = []
    tree = parse_file(str(main), problems)
    assert [n.name for n in tree] == ["host-name", "postmaster"]


def test_include_cycle_is_refused(tmp_path: Path) -> None:
    """A file that includes itself (through another) is an error at the include line."""
    (tmp_path / "a.conf").write_text("host-name a\ninclude b.conf\n")
    (tmp_path / "b.conf").write_text("include a.conf\n")
    problems: list[ConfigProblem] = []
    parse_file(str(tmp_path / "a.conf"), problems)
    assert len(problems) == 1
    assert problems[0].file.endswith("b.conf") and problems[0].line == 1
    assert "cycle" in problems[0].message


def test_missing_include_is_an_error(tmp_path: Path) -> None:
    """Including a file that does not exist names the including line."""
    (tmp_path / "a.conf").write_text("\ninclude nope.conf\n")
    problems: list[ConfigProblem] = []
    parse_file(str(tmp_path / "a.conf"), problems)
    assert [(p.line, "cannot include nope.conf" in p.message) for p in problems] == [(2, True)]
