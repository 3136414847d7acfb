"""A zip of one DICOM series, unpacked into its job folder with limits (zip bombs, hostile names).

Nothing in the archive is trusted: the declared sizes are checked before anything is unpacked and
the bytes actually produced are counted while streaming, against a total cap and a cap on the
ratio of unpacked to uploaded bytes, so a bomb is stopped after a bounded amount of work. Member
names never become paths: an absolute name or a ``..`` is refused outright, and every member is
written flat into one folder under a sanitised name, so nothing can land outside it. Folder entries
and the metadata that macOS and hidden files add are skipped; any other member must be DICOM.
"""

from __future__ import annotations

import lzma
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ..io.formats import ZIP_MAGICS, is_dicom_file
from .upload import UploadRefused

#: No archive may unpack to more than this many times its own size (DICOM deflates 2-5x; bombs ~1000x).
MAX_RATIO = 100
#: Members per archive: a series has at most MAX_AXIS_VOXELS (2048) slices.
MAX_MEMBERS = 4096
CHUNK = 1 << 20
_SKIPPED = re.compile(r"(^|/)(__MACOSX|\.[^/]*)(/|$)")  # Finder metadata, hidden files and folders


def _refuse(status: int, name: str, what: str) -> UploadRefused:
    return UploadRefused(status, f"{name} {what}")


def _member_name(name: str, info: zipfile.ZipInfo) -> str | None:
    """The flat file name a member is written under, None for one to skip; refuses hostile names."""
    raw = info.filename.replace("\\", "/")
    parts = PurePosixPath(raw).parts
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw) or ".." in parts:
        raise _refuse(422, name, f"holds {info.filename!r}, a path outside the zip; zip the series folder")
    if info.is_dir() or _SKIPPED.search(raw):
        return None
    if stat.S_ISLNK(info.external_attr >> 16):
        raise _refuse(422, name, f"holds a link ({info.filename}); zip the DICOM files themselves")
    return re.sub(r"[^A-Za-z0-9._-]", "_", "_".join(parts))[-128:]


def extract_series(archive: Path, dest: Path, name: str, max_bytes: int) -> Path:
    """Unpack ``archive`` (the upload, called ``name`` in messages) flat into ``dest``; the archive
    is removed afterwards. UploadRefused with the HTTP status for anything unusable."""
    with archive.open("rb") as f:
        if f.read(4) not in ZIP_MAGICS:
            raise _refuse(415, name, "is not a zip archive; zip the DICOM series folder, or send a .nii.gz")
    limit = min(max_bytes, MAX_RATIO * archive.stat().st_size)
    too_big = _refuse(
        413,
        name,
        f"unpacks to more than {limit / 1e6:.3g} MB (the limit: {MAX_RATIO}x the zip's size, at most "
        f"{max_bytes / 1e6:g} MB); send a smaller series",
    )
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > MAX_MEMBERS:
                raise _refuse(422, name, f"holds {len(members)} files (limit {MAX_MEMBERS}); zip one series")
            wanted = [(info, _member_name(name, info)) for info in members]
            wanted = [(info, flat) for info, flat in wanted if flat]
            if sum(info.file_size for info, _ in wanted) > limit:
                raise too_big
            dest.mkdir(parents=True)
            written = 0
            for info, flat in wanted:
                target = dest / flat
                if target.exists():
                    raise _refuse(422, name, f"holds two files named {flat}; zip one series folder")
                with zf.open(info) as src, target.open("xb") as sink:
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > limit:
                            raise too_big
                        sink.write(chunk)
    except (
        zipfile.BadZipFile,
        zlib.error,
        lzma.LZMAError,
        EOFError,
        NotImplementedError,
        RuntimeError,
    ) as exc:
        # RuntimeError: an encrypted member; NotImplementedError: a compression method zipfile lacks.
        shutil.rmtree(dest, ignore_errors=True)
        raise _refuse(400, name, f"cannot be unpacked ({exc}); zip the series again, unencrypted") from exc
    except OSError as exc:
        shutil.rmtree(dest, ignore_errors=True)
        if exc.errno is not None:  # the server's disk, not the archive: not the client's fault
            raise
        # bz2 reports a corrupt stream as an OSError without errno
        raise _refuse(400, name, f"cannot be unpacked ({exc}); zip the series again") from exc
    except UploadRefused:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        archive.unlink(missing_ok=True)
    files = sorted(dest.iterdir()) if dest.exists() else []
    dicom = [p for p in files if is_dicom_file(p)]
    if not dicom:
        shutil.rmtree(dest, ignore_errors=True)
        raise _refuse(415, name, "holds no DICOM files; zip one DICOM series folder, or send a .nii.gz")
    if len(dicom) < len(files):
        stray = next(p.name for p in files if p not in dicom)
        shutil.rmtree(dest, ignore_errors=True)
        raise _refuse(422, name, f"holds {stray}, which is not a DICOM file; zip one DICOM series only")
    return dest
