"""Small shared helpers, free of torch (the config imports them, and `tempstop --help` must
stay light): atomic file writes and their leftovers, a file's SHA-256, a model's train/eval
mode for a block."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line errors (a deep recursion says so)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class WriteError(OSError):
    """A file could not be written (a full disk, a read-only folder); the message names it."""


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see half a file.

    The temporary file lives in the target's folder so the rename stays on one filesystem.
    A failed write leaves ``path`` as it was and no temporary behind; an ``OSError`` comes
    back as a :class:`WriteError` naming ``path``.
    """
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        write(tmp_path)
        # mkstemp creates the file 0600; give it the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except WriteError:
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        error = WriteError(f"{path}: cannot write ({reason}); is the disk full?")
        error.errno = exc.errno
        raise error from None
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries that writers killed mid-write left in ``folder`` (hidden
    ``.*.tmp`` files, as :func:`atomic_write` and the frame store name them); returns them.

    Only for folders with a single writer, called before it starts writing.
    """
    folder = Path(folder)
    stale = sorted(p for p in folder.glob(".*.tmp") if p.is_file()) if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write JSON (indented, trailing newline) atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


@contextmanager
def model_mode(model, training: bool = False) -> Iterator[None]:
    """``model.train(training)`` for the block (eval by default), then its own mode again,
    also when the block raises."""
    was_training = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(was_training)



def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (``sha256``, ``sha1``...), read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes: what identifies a checkpoint."""
    return file_digest(path, "sha256")
