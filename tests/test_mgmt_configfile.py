"""Config file helpers: safe names, whole-set validation with real FILE:LINE, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mtaserver.config.files import (
    PathRefused,
    commit_files,
    listed_files,
    resolve_name,
    validate_files,
)
from mtaserver.config.load import load_config


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "etc"
    (directory / "conf.d").mkdir(parents=True)
    (directory / "main.conf").write_text(f"spool {tmp_path}/spool\ninclude conf.d/*.conf\n")
    (directory / "conf.d" / "a.conf").write_text("<domain a.test>\n    max-smtp-out 3\n</domain>\n")
    return directory


@pytest.mark.parametrize(
    "name", ["", "../x", "conf.d/../../x", "/etc/passwd", "\\\\server\\x", "a\0b", "."]
)
def test_resolve_name_refuses_escapes(config_dir: Path, name: str) -> None:
    """Empty, absolute, `..` and NUL names are refused."""
    with pytest.raises(PathRefused):
        resolve_name(str(config_dir), name)


def test_resolve_name_follows_symlinks(config_dir: Path, tmp_path: Path) -> None:
    """A symlink leading outside is refused; one staying inside resolves to its target."""
    (tmp_path / "outside").write_text("x")
    (config_dir / "out").symlink_to(tmp_path / "outside")
    (config_dir / "in").symlink_to(config_dir / "conf.d")
    with pytest.raises(PathRefused):
        resolve_name(str(config_dir), "out")
    assert resolve_name(str(config_dir), "in/a.conf") == str(config_dir / "conf.d" / "a.conf")
    assert resolve_name(str(config_dir), "conf.d/new.conf") == str(config_dir / "conf.d/new.conf")


def test_validation_names_real_files_and_writes_nothing(config_dir: Path) -> None:
    """Problems name the real file and line; an invalid set leaves the directory as it was."""
    config = load_config(str(config_dir / "main.conf"))
    target = resolve_name(str(config_dir), "conf.d/a.conf")
    problems = commit_files(config, {target: "<domain a.test>\n    max-smtp-out x\n</domain>\n"})
    assert len(problems) == 1 and problems[0].startswith(f"{target}:2: ")
    assert "max-smtp-out 3" in Path(target).read_text()
    assert sorted(os.listdir(config_dir / "conf.d")) == ["a.conf"]


def test_validation_sees_new_included_files(config_dir: Path) -> None:
    """A new file matched by an include glob is validated with the rest."""
    config = load_config(str(config_dir / "main.conf"))
    new = resolve_name(str(config_dir), "conf.d/b.conf")
    (problem,) = validate_files(config, {new: "unknown-thing 1\n"})
    assert problem.startswith(f"{new}:1: ") and "unknown-thing" in problem
    assert not os.path.exists(new)


def test_commit_writes_atomically(config_dir: Path) -> None:
    """A valid set is written whole, with no temporary files left behind."""
    config = load_config(str(config_dir / "main.conf"))
    new = resolve_name(str(config_dir), "conf.d/b.conf")
    assert commit_files(config, {new: "<domain b.test>\n</domain>\n"}) == []
    assert Path(new).read_text() == "<domain b.test>\n</domain>\n"
    assert sorted(os.listdir(config_dir / "conf.d")) == ["a.conf", "b.conf"]
    assert "b.test" in load_config(str(config_dir / "main.conf")).domains
    assert listed_files(config) == ["main.conf", os.path.join("conf.d", "a.conf")]
