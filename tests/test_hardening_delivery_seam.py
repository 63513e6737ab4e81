"""The delivery seam keeps `queue/` and `webhooks/` free of `smtp/`.

The scheduler and every deliverer meet in `mtaserver/queue/delivery.py` (the seam's
records) and `mtaserver/smtp_reply.py` (the one SMTP reply record); the SMTP client is
one deliverer among others. If `queue/` or `webhooks/` imported `smtp/`, the two
packages would grow back into each other. The source is parsed, never imported, and
every import counts: at module level, inside a function, or under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mtaserver"


def smtp_imports(source: str, name: str) -> list[str]:
    """`name:line module` for each import of `mtaserver.smtp` (or below) in `source`."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            if node.module == "mtaserver":
                modules = [f"mtaserver.{alias.name}" for alias in node.names]
        for module in modules:
            if module == "mtaserver.smtp" or module.startswith("mtaserver.smtp."):
                found.append(f"{name}:{node.lineno} {module}")
    return found


@pytest.mark.parametrize("package", ["queue", "webhooks"])
def test_package_never_imports_smtp(package: str) -> None:
    """No module under mtaserver/<package> imports mtaserver.smtp."""
    files = sorted((PACKAGE / package).rglob("*.py"))
    assert files
    offending = [
        hit
        for path in files
        for hit in smtp_imports(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    ]
    assert offending == []


def test_the_check_sees_every_import_form() -> None:
    """`import`, `from ... import`, `from mtaserver import smtp` and nested imports count."""
    source = (
        "import mtaserver.smtp.client\n"
        "from mtaserver.smtp.mx import Target\n"
        "from mtaserver import smtp, smtp_reply\n"
        "from mtaserver.smtp_reply import Reply\n"
        "def f():\n    from mtaserver.smtp import deliverer\n"
    )
    assert smtp_imports(source, "probe.py") == [
        "probe.py:1 mtaserver.smtp.client",
        "probe.py:2 mtaserver.smtp.mx",
        "probe.py:3 mtaserver.smtp",
        "probe.py:6 mtaserver.smtp",
    ]
