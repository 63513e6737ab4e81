"""The acct writer's checkpoint: how far into the journal its file is, and how long.

Exactly-once to files rests on one fact kept in one small file next to the acct file
(`.<name>.ckpt`): "the acct file held `size` bytes when every event before journal
`position` had been written". Recovery truncates the file to `size` and re-reads the
journal from `position`, so lines written after the last checkpoint (complete or torn)
are dropped and written again, once. The file is replaced atomically (temporary name,
fsync, rename, fsync of the directory), so it is always one whole checkpoint.

`rotated_to` marks a rotation in progress: the acct file is being renamed to that name
and a fresh one started; recovery finishes the rename instead of truncating.
Blocking file I/O: call these from a worker thread.
"""

from __future__ import annotations

import json
import os

import attrs

from mtaserver.fsutil import atomic_write

VERSION = 1


@attrs.frozen
class Checkpoint:
    """What the acct file `file` holds: everything before `position`, in `size` bytes."""

    file: str
    position: tuple[int, int]
    size: int
    rotated_to: str | None = None


def checkpoint_path(acct_path: str) -> str:
    """`dir/acct.csv` -> `dir/.acct.csv.ckpt`: hidden, next to the file it describes."""
    directory, name = os.path.split(acct_path)
    return os.path.join(directory, f".{name}.ckpt")


def load_checkpoint(path: str) -> Checkpoint | None:
    """The checkpoint at `path`, None if there is none; a damaged one is a ValueError.

    A damaged checkpoint is not guessed around: starting over could duplicate a whole
    file of records, so the operator has to decide.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        segment, offset = data["position"]
        return Checkpoint(
            file=str(data["file"]),
            position=(int(segment), int(offset)),
            size=int(data["size"]),
            rotated_to=data.get("rotated_to"),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable acct checkpoint: {e}") from e


def save_checkpoint(path: str, checkpoint: Checkpoint) -> None:
    """Replace the checkpoint at `path` atomically and durably."""
    data = {
        "version": VERSION,
        "file": checkpoint.file,
        "position": list(checkpoint.position),
        "size": checkpoint.size,
    }
    if checkpoint.rotated_to is not None:
        data["rotated_to"] = checkpoint.rotated_to
    atomic_write(path, json.dumps(data), temporary=path + ".tmp")
