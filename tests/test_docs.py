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
