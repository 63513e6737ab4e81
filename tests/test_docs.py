"""The docs name every directive the registry knows, so the reference cannot fall behind."""

from __future__ import annotations

from pathlib import Path

from mtaserver.config import registry as reg

ROOT = Path(__file__).resolve().parent.parent


def test_every_directive_is_documented() -> None:
    """docs/config.rst mentions each directive as ``name``."""
    text = (ROOT / "docs" / "config.rst").read_text()
    missing = [name for name in reg.DIRECTIVES if f"``{name}``" not in text]
    assert missing == []


def reference_rows() -> list[tuple[str, list[str]]]:
    """Each directive row of docs/config.rst's tables: (directive, its cells)."""
    rows: list[tuple[str, list[str]]] = []
    for line in (ROOT / "docs" / "config.rst").read_text().splitlines():
        if line.startswith("   * - "):
            rows.append((line[len("   * - ") :], []))
        elif line.startswith("     - ") and rows:
            rows[-1][1].append(line[len("     - ") :].strip())
        elif rows and line.strip() and not line.startswith("      "):
            rows.append(("", []))  # text after a table ends its last row
    return [(first, cells) for first, cells in rows if first.startswith("``")]


def test_every_directive_is_marked_live_or_restart() -> None:
    """Each table row ends in live or restart, as registry.RESTART_ONLY says."""
    marked: dict[str, set[str]] = {}
    for first, cells in reference_rows():
        name = first.split("``")[1]
        assert len(cells) == 3, f"{name}: value, default and reload cells, not {cells}"
        marked.setdefault(name, set()).add(cells[-1])
    assert sorted(set(reg.DIRECTIVES) - set(marked)) == []
    wrong = {
        name: marks
        for name, marks in marked.items()
        if marks != {"restart" if name in reg.RESTART_ONLY else "live"}
    }
    assert wrong == {}
