"""Receive one upload (multipart/form-data, field ``file``) into a job folder, streaming: a NIfTI scan
or a zip of one DICOM series (unpacked by :mod:`.archive`).

The size limit is enforced twice: from Content-Length before a byte is read, and while streaming
(chunked uploads have no length, and a client may lie), so an oversized upload is refused as soon as
it passes the limit, never written in full. Only the name is judged here (.nii, .nii.gz or .zip, as
nibabel picks the format by suffix); the content is judged by the pipeline's own validation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from ..io.formats import NIFTI_SUFFIXES, ZIP_SUFFIX

#: Room for the multipart framing (boundaries, part headers) on top of the file's own bytes.
FRAMING_BYTES = 64 * 1024
FIELD = "file"
SUFFIXES = (*NIFTI_SUFFIXES, ZIP_SUFFIX)
MAX_NAME = 128


class UploadRefused(Exception):
    """An upload the server will not take: HTTP status and the one-line message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def too_large(limit: int) -> UploadRefused:
    return UploadRefused(
        413, f"the upload is larger than this server's limit of {limit / 1e6:g} MB; send a smaller scan"
    )


def safe_name(filename: str) -> str:
    """The client's file name reduced to a plain base name (no folders, no hidden files, no odd
    characters), kept for output names and messages; refused unless .nii, .nii.gz or .zip."""
    base = PurePosixPath(filename.replace("\\", "/")).name
    name = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")[-MAX_NAME:]
    if not name.lower().endswith(SUFFIXES) or name.lower() in SUFFIXES:
        raise UploadRefused(
            415,
            f"{base or 'the upload'} is not a .nii, .nii.gz or .zip file; send a NIfTI scan or a zip of "
            "one DICOM series",
        )
    return name


@dataclass
class Upload:
    name: str
    path: Path
    bytes: int


class _FilePart:
    """Multipart parser callbacks that write the ``file`` part to ``folder`` and ignore other parts."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder, self.limit = folder, limit
        self.header_name, self.header_value = b"", b""
        self.disposition = b""
        self.sink: BinaryIO | None = None
        self.upload: Upload | None = None
        self.complete = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda d, s, e: self._add("header_name", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("header_value", d[s:e]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def _add(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + data)

    def on_part_begin(self) -> None:
        self.disposition = b""

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.disposition)
        if params.get(b"name") != FIELD.encode() or b"filename" not in params:
            return
        if self.upload is not None:
            raise UploadRefused(400, "the upload holds more than one file; send one scan per request")
        filename = params[b"filename"].decode("utf-8", "replace")
        if not filename:
            raise UploadRefused(400, "no file was chosen; attach a .nii, .nii.gz or .zip as 'file'")
        name = safe_name(filename)
        self.upload = Upload(name, self.folder / name, 0)
        self.sink = self.upload.path.open("wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.sink is None or self.upload is None:
            return
        self.upload.bytes += end - start
        if self.upload.bytes > self.limit:
            raise too_large(self.limit)
        self.sink.write(data[start:end])

    def on_part_end(self) -> None:
        if self.sink is not None:
            self.sink.close()
            self.sink = None
            self.complete = True

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()


def check_length(request: Request, limit: int) -> None:
    """Refuse by Content-Length alone, before anything is read or stored."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit + FRAMING_BYTES:
        raise too_large(limit)


async def receive(request: Request, folder: Path, limit: int) -> Upload:
    """Stream the request's ``file`` part into ``folder``; UploadRefused for anything unusable."""
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or b"boundary" not in params:
        raise UploadRefused(
            415, "send the scan as multipart/form-data in a field named 'file' (curl -F file=@scan.nii.gz)"
        )
    check_length(request, limit)
    part = _FilePart(folder, limit)
    parser = MultipartParser(params[b"boundary"], part.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit + FRAMING_BYTES:
                raise too_large(limit)
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise UploadRefused(
            400, f"the upload is not valid multipart/form-data ({exc}); send it again"
        ) from exc
    except ClientDisconnect as exc:
        raise UploadRefused(400, "the upload was interrupted; send it again") from exc
    finally:
        part.close()
    if part.upload is None:
        raise UploadRefused(400, f"no file in the upload; attach the scan as the form field '{FIELD}'")
    if not part.complete:
        raise UploadRefused(400, "the upload ended before the file was complete; send it again")
    return part.upload
