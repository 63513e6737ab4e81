"""The layering of mtaserver, read from the source: which part may import which.

Every module under `mtaserver/` is parsed (never imported) and every `import` in it,
at module level or inside a function, is resolved to the *unit* it names: a
subpackage (`mtaserver/http/...` is `http`) or a top-level module (`mtaserver/tap.py`
is `tap`). The rules are those of the restructuring issue:

* `http/` never imports `smtp/` (the API and the SMTP server meet in `message/`);
* `config/`, `spool/` and `accounting/` import none of `smtp/`, `http/`, `queue/`,
  `webhooks/` (they sit below everything that uses them);
* `message/` (the intake path) imports none of `smtp/`, `http/`, `queue/`;
* `queue/` never imports `smtp/` (the delivery seam lives in `queue/delivery.py`);
* no import cycle between units (imports under `if TYPE_CHECKING:` do not count for
  cycles, since they never run).

A rule the code does not keep yet is marked `xfail(strict=True)` in `NOT_YET`, so the
test flips to a failure (XPASS) the moment the move that fixes it lands; the failure
message of a broken rule lists every offending `file:line`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mtaserver"


@attrs.frozen
class Import:
    """One import statement's target, as a unit of mtaserver, and where it is."""

    source: str  # the importing unit
    target: str  # the imported unit
    where: str  # path:line, for the failure message
    type_only: bool  # under `if TYPE_CHECKING:`


def unit_of(module: str) -> str | None:
    """`mtaserver.http.access` -> `http`; `mtaserver.tap` -> `tap`; others -> None."""
    parts = module.split(".")
    if parts[0] != "mtaserver" or len(parts) < 2:
        return None
    return parts[1]


def is_unit(name: str) -> bool:
    """Whether `mtaserver.<name>` is a subpackage or a top-level module."""
    return (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, type_only: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every node under `node`, with whether it sits under `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for inner in child.body:
                yield inner, True
                yield from _walk(inner, True)
            for inner in child.orelse:
                yield inner, type_only
                yield from _walk(inner, type_only)
            continue
        yield child, type_only
        yield from _walk(child, type_only)


def imports_of(path: Path) -> Iterator[Import]:
    """The mtaserver units `path` imports (relative imports resolved)."""
    name = module_name(path)
    source = unit_of(name)
    if source is None:  # mtaserver/__init__.py only hands names on
        return
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), str(path))
    where_prefix = str(path.relative_to(PACKAGE.parent))
    for node, type_only in _walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from mtaserver import smtp` names the unit in the alias (`__version__` is
            # a name of the package itself, not a unit)
            targets = (
                [f"{module}.{alias.name}" for alias in node.names if is_unit(alias.name)]
                if module == "mtaserver"
                else [module]
            )
        for target in targets:
            unit = unit_of(target)
            if unit is not None and unit != source:
                yield Import(source, unit, f"{where_prefix}:{node.lineno}", type_only)


def all_imports() -> list[Import]:
    return [found for path in sorted(PACKAGE.rglob("*.py")) for found in imports_of(path)]


# -- the rules ---------------------------------------------------------------------------

FORBIDDEN: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "http-never-imports-smtp": (("http",), ("smtp",)),
    "config-spool-accounting-import-no-upper-layer": (
        ("config", "spool", "accounting"),
        ("smtp", "http", "queue", "webhooks"),
    ),
    "message-imports-no-smtp-http-queue": (("message",), ("smtp", "http", "queue")),
    "queue-never-imports-smtp": (("queue",), ("smtp",)),
}

# Rules the code did not keep yet when this test was written (the moves are in flight);
# strict, so each flips to XPASS, a failure, once its rule holds: then delete the entry.
NOT_YET: dict[str, str] = {}


def _mark(rule: str) -> pytest.MarkDecorator | tuple[()]:
    if rule in NOT_YET:
        return pytest.mark.xfail(strict=True, reason=NOT_YET[rule])
    return ()


def violations(sources: tuple[str, ...], targets: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{found.where}: {found.source} imports {found.target}"
        for found in all_imports()
        if found.source in sources and found.target in targets
    )


@pytest.mark.parametrize(
    "rule",
    [pytest.param(rule, marks=_mark(rule)) for rule in FORBIDDEN],
)
def test_layering_rule(rule: str) -> None:
    """No module of the lower units imports one of the forbidden upper units."""
    sources, targets = FORBIDDEN[rule]
    found = violations(sources, targets)
    assert found == [], f"{rule} broken:\n" + "\n".join(found)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one unit (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def test_cycle_finder_sees_a_cycle() -> None:
    """The cycle finder reports a -> b -> c -> a and leaves d (only imported) out."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == [["a", "b", "c"]]


def test_type_checking_imports_are_told_apart() -> None:
    """An import under `if TYPE_CHECKING:` is marked type-only; one in a function is not."""
    tree = ast.parse(
        "def f():\n    from mtaserver.smtp import x\nif TYPE_CHECKING:\n    import mtaserver.tap\n"
    )
    kinds = [(type(node).__name__, type_only) for node, type_only in _walk(tree)]
    assert ("ImportFrom", False) in kinds and ("Import", True) in kinds


def test_every_module_is_read() -> None:
    """The walk sees the units the rules name (a wrong root would find nothing and pass)."""
    sources = {found.source for found in all_imports()}
    assert {"http", "smtp", "queue", "config", "spool", "accounting", "tap"} <= sources


@pytest.mark.parametrize(
    "rule", [pytest.param("no-cycles-between-units", marks=_mark("no-cycles-between-units"))]
)
def test_no_import_cycles_between_units(rule: str) -> None:
    """No subpackage or top-level module reaches itself again through its imports."""
    edges: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for found in all_imports():
        if found.type_only:
            continue
        edges.setdefault(found.source, set()).add(found.target)
        where.setdefault((found.source, found.target), found.where)
    found_cycles = cycles(edges)
    detail = [
        f"{' <-> '.join(component)}: "
        + ", ".join(
            f"{a}->{b} ({where[(a, b)]})"
            for a in component
            for b in sorted(edges.get(a, ()))
            if b in component
        )
        for component in found_cycles
    ]
    assert found_cycles == [], "import cycles:\n" + "\n".join(detail)


# -- one definition each ------------------------------------------------------------------

SINGLE_DEFINITIONS = ("RunInThread", "Clock", "atomic_write", "fsync_directory")


def top_level_definitions(name: str) -> list[str]:
    """Where a module of mtaserver defines `name` at top level (class, def or assignment)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text(), str(path)).body:
            defined: list[str] = []
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                defined = [node.name]
            elif isinstance(node, ast.Assign):
                defined = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                defined = [node.target.id]
            if name in defined:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return found


@pytest.mark.parametrize("name", SINGLE_DEFINITIONS)
def test_one_definition_each(name: str) -> None:
    """The thread runner, the clock protocol and the atomic write are defined once."""
    found = top_level_definitions(name)
    assert len(found) == 1, f"{name} defined {len(found)} times: {found}"
