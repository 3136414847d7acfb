"""Generic file helpers: atomic writes, hashes, our tagged JSON sidecars, one-line OS error messages.

Nothing here knows NIfTI or checkpoints; every writer of the package (masks, reports, checkpoints,
manifests, engines) goes through ``atomic_write``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import MhunetError, OutputError


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def os_error_message(path: Path, exc: OSError) -> str:
    reason = exc.strerror or one_line(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device writing {path} ({reason}); free disk space or write elsewhere"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write to folder {path.parent} ({reason}); choose a writable output folder"
    return f"cannot write {path} ({reason}); check the output folder and free disk space"


def atomic_write(path: str | os.PathLike, write_fn: Callable[[Path], object]) -> Path:
    """Write `path` so that readers see the old file or the whole new one, never a partial one.

    `write_fn(tmp)` writes the complete file at `tmp`: a hidden path in the same folder (same
    filesystem) ending in `path`'s name, so writers that pick the format by suffix still work. The
    file is then fsynced and renamed over `path`; on any failure `tmp` is removed, and OSError
    becomes OutputError.
    """
    path = Path(path).absolute()
    folder = path.parent
    if not folder.exists():
        raise OutputError(f"output folder {folder} does not exist; create it or choose another output path")
    if not folder.is_dir():
        raise OutputError(f"{folder} is not a folder; choose another output path")
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name for the output")
    tmp = folder / f".{secrets.token_hex(6)}.{path.name}"
    try:
        # O_EXCL: never clobber a file we did not create; mode 0o666 lets the umask apply as usual.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        write_fn(tmp)
        _fsync(tmp, os.O_RDWR)
        os.replace(tmp, path)
        if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
            _fsync(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise OutputError(os_error_message(path, exc)) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_tagged_json(path: Path, fmt: str, kind: str, fix: str, error: type[MhunetError]) -> dict[str, Any]:
    """Read one of our JSON sidecars (checkpoint sidecar, graph manifest) and check its ``format`` tag;
    every failure is one ``error`` line naming the file, the problem and ``fix``."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{path}: {kind} missing; {fix}") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: {kind} is not valid JSON ({e.msg}); {fix}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise error(f"{path}: not an mhunet {kind} (format {found!r}); {fix}")
    return data
