"""The server's job store: one folder per job, bounded in count, bytes and age.

Jobs live as long as the process: results are there to be fetched, not archived, so a restart starts
empty (and clears job folders an earlier run left in the same store). A finished job expires
``expire_s`` after it finishes; when the store is full the oldest finished jobs are evicted first.
Queued and running jobs are never evicted: when every slot holds one, new uploads are refused (the
app answers 503) until one finishes. A removed job leaves a tombstone, so its id answers 410 with
the reason instead of a bare 404.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Job ids: 128 random bits as hex, unguessable (a job's results are readable by whoever has its id).
ID_PATTERN = re.compile(r"[0-9a-f]{32}")
#: How many removed ids still answer 410 (then 404): bounded so the store cannot grow without limit.
MAX_TOMBSTONES = 10_000
FINISHED = ("done", "failed")
#: The job-folder subfolder a zipped DICOM series is unpacked into (never the outputs' folder).
UNPACKED = "series"


class StoreError(Exception):
    """A store refusal with the one-line message the client sees."""


class JobNotFound(StoreError):
    pass


class JobGone(StoreError):
    pass


class StoreFull(StoreError):
    pass


@dataclass
class Job:
    """One upload and what became of it; its fields are what GET /v1/jobs/{id} shows."""

    id: str
    folder: Path
    created: float = field(default_factory=time.time)
    #: receiving -> queued -> running -> done | failed
    state: str = "receiving"
    name: str = ""
    started: float | None = None
    finished: float | None = None
    slices_done: int = 0
    slices_total: int | None = None
    report: dict[str, Any] | None = None
    #: Output files by download name (mask, prob, qc, report, csv; seg, sr for DICOM), once done.
    files: dict[str, Path] = field(default_factory=dict)
    status: int | None = None
    error: str | None = None
    bytes: int = 0
    #: Set (on the event loop, see :meth:`notify`) once the job is done or failed; for ``?wait=true``.
    event: asyncio.Event = field(default_factory=asyncio.Event)
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def input(self) -> Path:
        """The uploaded NIfTI, or the folder a zipped DICOM series is unpacked into, named after the
        zip because the outputs are named after the input (scan.zip: scan_mask.nii.gz, scan_seg.dcm)."""
        if self.name.lower().endswith(".zip"):
            return self.folder / UNPACKED / self.name[: -len(".zip")]
        return self.folder / self.name

    def remove_input(self) -> None:
        """Delete the upload (the file, or the unpacked series) once its results exist."""
        shutil.rmtree(self.folder / UNPACKED, ignore_errors=True)
        self.input.unlink(missing_ok=True)

    @property
    def out_dir(self) -> Path:
        return self.folder / "out"

    def notify(self) -> None:
        """Wake whoever waits on this job, from any thread."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.event.set)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class JobStore:
    """Job folders under ``root`` (a fresh temporary folder, removed on close, when None)."""

    def __init__(self, root: Path | None, max_jobs: int, max_bytes: int, expire_s: float) -> None:
        self.owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="mhunet-serve-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_jobs, self.max_bytes, self.expire_s = max_jobs, max_bytes, expire_s
        self.jobs: dict[str, Job] = {}  # in arrival order
        self.tombstones: OrderedDict[str, str] = OrderedDict()
        self.lock = threading.Lock()
        for leftover in self.root.iterdir():  # only folders named like our job ids are touched
            if leftover.is_dir() and ID_PATTERN.fullmatch(leftover.name):
                shutil.rmtree(leftover, ignore_errors=True)

    def reserve(self) -> Job:
        """A new job with an empty folder, making room by evicting finished jobs, oldest first."""
        with self.lock:
            self._expire()
            self._evict(lambda: len(self.jobs) >= self.max_jobs)
            if len(self.jobs) >= self.max_jobs:
                raise StoreFull(
                    f"the server is busy: {len(self.jobs)} jobs are queued or running (limit "
                    f"{self.max_jobs}); retry when one has finished"
                )
            job_id = secrets.token_hex(16)
            job = Job(id=job_id, folder=self.root / job_id)
            job.folder.mkdir()
            self.jobs[job.id] = job
            return job

    def discard(self, job: Job) -> None:
        """Forget a job that never queued (refused upload): nothing of it stays on disk."""
        with self.lock:
            self.jobs.pop(job.id, None)
            shutil.rmtree(job.folder, ignore_errors=True)

    def account(self, job: Job) -> None:
        """Count the job's bytes now on disk and evict other finished jobs while over the byte limit
        (a single job larger than the limit is kept: its results were asked for)."""
        size = folder_bytes(job.folder)
        with self.lock:
            job.bytes = size
            self._evict(lambda: sum(j.bytes for j in self.jobs.values()) > self.max_bytes, keep=job)

    def get(self, job_id: str) -> Job:
        with self.lock:
            self._expire()
            job = self.jobs.get(job_id)
            if job is not None and job.state != "receiving":
                return job
            if job_id in self.tombstones:
                raise JobGone(f"job {job_id} {self.tombstones[job_id]}; submit the scan again")
            raise JobNotFound(f"no job {job_id}; job ids are returned by POST /v1/segment")

    def queue_position(self, job: Job) -> int | None:
        """1 for the next job to run; None unless queued."""
        if job.state != "queued":
            return None
        with self.lock:
            queued = [j for j in self.jobs.values() if j.state == "queued"]
        return queued.index(job) + 1 if job in queued else None

    def counts(self) -> dict[str, int]:
        with self.lock:
            states = [j.state for j in self.jobs.values()]
        return {s: states.count(s) for s in ("queued", "running", "done", "failed")}

    def expire(self) -> None:
        with self.lock:
            self._expire()

    def close(self) -> None:
        """Remove the store's folder if this process made it; a given --store keeps its job folders
        until the next start."""
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)

    def _expire(self) -> None:
        now = time.time()
        for job in list(self.jobs.values()):
            if job.state in FINISHED and job.finished is not None and now - job.finished > self.expire_s:
                self._remove(job, f"expired (results are kept {self.expire_s:g} s after they finish)")

    def _evict(self, over: Callable[[], bool], keep: Job | None = None) -> None:
        for job in list(self.jobs.values()):
            if not over():
                return
            if job.state in FINISHED and job is not keep:
                self._remove(
                    job,
                    f"was removed to make room for newer jobs (the store keeps {self.max_jobs} jobs, "
                    f"{self.max_bytes / 1e6:g} MB)",
                )

    def _remove(self, job: Job, reason: str) -> None:
        del self.jobs[job.id]
        shutil.rmtree(job.folder, ignore_errors=True)
        self.tombstones[job.id] = reason
        while len(self.tombstones) > MAX_TOMBSTONES:
            self.tombstones.popitem(last=False)
