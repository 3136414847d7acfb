"""A real `mhunet serve` process on a loopback port, and plain-HTTP helpers (stdlib only) for the
serve tests and scripts/load_test_serve.py."""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import nibabel as nib
import numpy as np

from tests.tiny_model import PATIENT26, save_tiny

REPO = Path(__file__).resolve().parents[1]
#: Axial slices of patient26 kept for the success path: lesions in each, 6 slices keep it fast on a CPU.
PATIENT26_SLICES = slice(86, 92)
#: The tiny random model's lesion probabilities all lie near 0.018; this threshold (in its checkpoint's
#: packaged post-processing, as for the real model) turns them into a few dozen input-dependent lesions.
TINY_THRESHOLD = 0.01838


def lesion_tiny(path: Path, threshold: float = TINY_THRESHOLD, min_lesion_mm3: float = 2.0) -> Path:
    """The tiny test model, with post-processing that finds lesions in small synthetic volumes (the
    default threshold) or in real slices (a threshold nearer the top of its probabilities)."""
    save_tiny(path)
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["postprocess"] = {"threshold": threshold, "min_lesion_mm3": min_lesion_mm3}
    sidecar.write_text(json.dumps(meta, indent=2))
    return path


def varied_volume(path: Path, seed: int) -> Path:
    """A small synthetic scan whose shape and content depend on ``seed`` (results must not mix)."""
    rng = np.random.default_rng(seed)
    shape = (36 + 2 * (seed % 5), 44 + (seed % 3), 3 + seed % 4)
    data = rng.normal(100, 10, shape).astype(np.float32)
    x, y = rng.integers(4, 20, size=2)
    data[x : x + 10, y : y + 10, 1:3] += 60
    img = nib.Nifti1Image(data, np.diag([0.9, 0.9, 3.0, 1.0]))
    img.set_qform(img.affine, code=1)
    nib.save(img, path)
    return path


def patient26_crop(path: Path) -> Path:
    """A few axial slices of the shared patient26 FLAIR, geometry kept (the affine moves with them)."""
    nib.save(nib.load(PATIENT26).slicer[:, :, PATIENT26_SLICES], path)
    return path


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def multipart(name: str, data: bytes, field: str = "file") -> tuple[bytes, str]:
    boundary = secrets.token_hex(12)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def request(
    url: str,
    method: str = "GET",
    body: bytes | Iterator[bytes] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 300,
) -> Reply:
    """One HTTP request on a fresh connection; an iterator body is sent chunked (no Content-Length)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        chunked = body is not None and not isinstance(body, bytes)
        conn.request(method, target, body=body, headers=headers or {}, encode_chunked=chunked)
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def upload(
    base: str, path: Path, *, wait: bool = False, key: str | None = None, name: str | None = None
) -> Reply:
    body, ctype = multipart(name or path.name, path.read_bytes())
    headers = {"Content-Type": ctype, **({"X-API-Key": key} if key else {})}
    return request(f"{base}/v1/segment{'?wait=true' if wait else ''}", "POST", body, headers)


def wait_done(base: str, job_id: str, key: str | None = None, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = request(f"{base}/v1/jobs/{job_id}", headers={"X-API-Key": key} if key else {}).json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} not finished after {timeout} s")


@contextmanager
def running_server(log: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`mhunet serve --port 0 ARGS` in its own process; yields its URL from the startup line and
    stops it with SIGINT (as Ctrl-C would) at the end."""
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mhunet_deploy.cli", "serve", "--port", "0", *args],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    try:
        deadline = time.monotonic() + 180
        while not (found := re.search(r"mhunet serve: (http://\S+)", log.read_text())):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mhunet serve did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield found.group(1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
