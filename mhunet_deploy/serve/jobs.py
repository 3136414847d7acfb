"""Run jobs one at a time on the one loaded backend, through the CLI's code path (infer_volume).

One thread owns the backend: a GPU (or the CPU's cores) serves one volume at a time best, and no
backend has to be thread-safe. Requests queue in arrival order; the job records progress from the
pipeline's callbacks. Errors keep the CLI's one-line message (the server's folders replaced by the
upload's name) and get the HTTP status of their class: see :func:`http_status`.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..backends.base import Backend
from ..errors import BackendError, InputError, MhunetError
from ..io.formats import has_nifti_magic, read_head
from ..pipeline import InferOptions, infer_volume
from .store import Job, JobStore

log = logging.getLogger(__name__)

#: Download names under /v1/jobs/{id}/ for the pipeline's output keys.
DOWNLOADS = {
    "mask": "mask",
    "brain": "brain",
    "probabilities": "prob",
    "qc": "qc",
    "report": "report",
    "csv": "csv",
    "seg": "seg",
    "sr": "sr",
}
#: The CLI's remedies in the pipeline's messages, as a client of the server can act on them.
CLI_REMEDIES = {
    "; pick one with --series UID": "; zip one series per upload",
    ", or pass --no-dicom-seg": "",
}
#: How often an idle worker removes expired jobs.
REAP_INTERVAL_S = 5.0


def _is_nifti(path: Path) -> bool:
    """Whether the file (gzipped or not) starts with a NIfTI-1/2 header; unreadable counts as yes,
    because a file that cannot be read is a broken upload (400), not the wrong type (415)."""
    try:
        return has_nifti_magic(read_head(path))
    except (OSError, EOFError, zlib.error):
        return True


def http_status(exc: MhunetError, upload: Path) -> int:
    """InputError: 400 when the bytes cannot be read (truncated, corrupt: raised from a read error),
    415 when they are not NIfTI, 422 for a readable NIfTI or an unpacked DICOM series (a folder)
    that mhunet cannot use (2D, constant, several series, no geometry, ...).
    BackendError: 503; anything else (OutputError: the server cannot write results): 500."""
    if isinstance(exc, InputError):
        if exc.__cause__ is not None:
            return 400
        return 422 if upload.is_dir() or _is_nifti(upload) else 415
    return 503 if isinstance(exc, BackendError) else 500


def user_message(exc: BaseException, job: Job) -> str:
    """The CLI's message as if the upload were run in its own folder: no server paths in it, and
    the CLI's options replaced by what a client can do."""
    message = str(exc).replace(str(job.input), job.name).replace(f"{job.folder}/", "")
    for cli, client in CLI_REMEDIES.items():
        message = message.replace(cli, client)
    return message


def public_report(report: dict[str, Any], job: Job, base: str) -> dict[str, Any]:
    """The pipeline's report with the server's paths replaced: the input by its upload name, each
    output by its download URL, the checkpoint by its file name."""
    public = copy.deepcopy(report)
    public["input"]["path"] = job.name
    public["outputs"] = {DOWNLOADS[k]: f"{base}/{DOWNLOADS[k]}" for k in report["outputs"]}
    if "checkpoint" in public["model"]:
        public["model"]["checkpoint"] = Path(public["model"]["checkpoint"]).name
    return public


class Worker:
    """The thread that owns the backend and runs queued jobs in order."""

    def __init__(self, backend: Backend, options: InferOptions, store: JobStore) -> None:
        self.backend, self.options, self.store = backend, options, store
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="mhunet-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the running job (up to ``timeout``), then stop; queued jobs are not run."""
        self.stopping.set()
        self.queue.put(None)  # wakes an idle worker
        self.thread.join(timeout)

    def submit(self, job: Job) -> None:
        job.state = "queued"
        self.queue.put(job)

    def _loop(self) -> None:
        while True:
            try:
                job = self.queue.get(timeout=REAP_INTERVAL_S)
            except queue.Empty:
                self.store.expire()
                continue
            if job is None or self.stopping.is_set():
                return
            self.run(job)

    def run(self, job: Job) -> None:
        job.state, job.started = "running", time.time()
        log.info("job %s: %s started", job.id, job.name)

        def on_start(total: int) -> None:
            job.slices_total = total

        def on_batch(k: int) -> None:
            job.slices_done += k

        try:
            options = replace(self.options, display_name=job.name)  # no server paths in report or QC page
            report = infer_volume(job.input, job.out_dir, self.backend, options, on_start, on_batch)
        except MhunetError as exc:
            job.status, job.error = http_status(exc, job.input), user_message(exc, job)
            job.state = "failed"
        except Exception:
            log.exception("job %s failed", job.id)
            job.status, job.error = 500, "internal server error while segmenting; see the server log"
            job.state = "failed"
        else:
            job.report = public_report(report, job, f"/v1/jobs/{job.id}")
            job.files = {DOWNLOADS[k]: Path(v) for k, v in report["outputs"].items()}
            job.state = "done"
        finally:
            job.finished = time.time()
            job.remove_input()  # the upload is not needed once its results exist
            self.store.account(job)
            job.notify()
        log.info("job %s: %s in %.1f s", job.id, job.state, job.finished - job.started)
