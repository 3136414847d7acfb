"""The HTTP API and the web page of `mhunet serve` (FastAPI).

POST /v1/segment takes a NIfTI upload or a zip of one DICOM series, refuses a bad one at once with
the CLI's one-line message and an HTTP status (a zip is unpacked with limits, then validation runs
the pipeline's own loader), and queues a good one for the worker;
GET /v1/jobs/{id} shows its state and, once done, the lesion report with links to the outputs.
With an API key, everything under /v1 needs it in the X-API-Key header; /, /healthz and
/openapi.json stay open (they show no patient data).
"""

from __future__ import annotations

import asyncio
import hmac
import html
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel

from .. import __version__
from ..backends.base import Backend
from ..errors import MhunetError
from ..io.formats import is_zip_name
from ..pipeline import InferOptions, load_input
from ..report import DISCLAIMER
from .archive import extract_series
from .jobs import Worker, http_status, user_message
from .store import ID_PATTERN, Job, JobGone, JobNotFound, JobStore, StoreFull
from .upload import UploadRefused, check_length, receive

#: Uploads validated at once (each loads a whole volume into memory).
VALIDATE_AT_ONCE = 2
#: A zipped series may unpack to this many times the upload limit (DICOM deflates 2-5x).
UNPACKED_PER_UPLOAD = 4
PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
MEDIA_TYPES = {
    "mask": "application/gzip",
    "brain": "application/gzip",
    "prob": "application/gzip",
    "qc": "image/png",
    "csv": "text/csv",
    "seg": "application/dicom",
    "sr": "application/dicom",
}
Download = Literal["mask", "brain", "prob", "qc", "report", "csv", "seg", "sr"]


class Progress(BaseModel):
    slices_done: int
    slices_total: int | None


class JobOut(BaseModel):
    """A job as GET /v1/jobs/{id} shows it; ``report`` (the lesion report) once ``state`` is done."""

    id: str
    state: Literal["queued", "running", "done", "failed"]
    input: str
    queue_position: int | None
    progress: Progress
    created: str
    started: str | None
    finished: str | None
    expires_at: str | None
    status: int | None
    error: str | None
    report: dict[str, Any] | None
    links: dict[str, str]
    disclaimer: str


class Health(BaseModel):
    status: str
    version: str
    backend: str
    precision: str
    model: dict[str, str]
    engine_key: dict[str, Any] | None
    queue_length: int
    running: int
    auth_required: bool
    max_upload_mb: float
    disclaimer: str


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _error(status: int, description: str) -> dict[int | str, dict[str, Any]]:
    return {status: {"description": description}}


def create_app(
    backend: Backend,
    options: InferOptions,
    store: JobStore,
    *,
    api_key: str | None = None,
    max_upload_bytes: int = 512_000_000,
) -> FastAPI:
    """The app around one loaded backend; its worker starts and stops with the app's lifespan."""
    worker = Worker(backend, options, store)
    max_unpacked_bytes = UNPACKED_PER_UPLOAD * max_upload_bytes
    validate_limiter = anyio.CapacityLimiter(VALIDATE_AT_ONCE)
    page = (
        resources.files(__package__)
        .joinpath("page.html")
        .read_text(encoding="utf-8")
        .replace("__DISCLAIMER__", html.escape(DISCLAIMER))
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(worker.stop)
            store.close()

    app = FastAPI(
        title="mhunet serve",
        version=__version__,
        description=f"Mamba-HUNet MS-lesion segmentation of FLAIR MRI. {DISCLAIMER}.",
        docs_url=None,  # Swagger UI and ReDoc load their assets from a CDN; the schema is /openapi.json
        redoc_url=None,
        lifespan=lifespan,
    )
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Required when set")

    def require_key(given: str | None = Depends(key_header)) -> None:
        if api_key is not None and not hmac.compare_digest((given or "").encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong X-API-Key header; send this server's API key")

    api = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])
    auth_errors = _error(401, "X-API-Key missing or wrong (servers with a key)") if api_key else {}

    def find(job_id: str) -> Job:
        try:
            if not ID_PATTERN.fullmatch(job_id):
                raise JobNotFound(f"no job {job_id}; job ids are returned by POST /v1/segment")
            return store.get(job_id)
        except JobNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except JobGone as exc:
            raise HTTPException(410, str(exc)) from exc

    def describe(job: Job) -> dict[str, Any]:
        base = f"/v1/jobs/{job.id}"
        links = {"self": base}
        if job.state == "done":
            links.update({k: f"{base}/{k}" for k in job.files})
        return JobOut(
            id=job.id,
            state=job.state,
            input=job.name,
            queue_position=store.queue_position(job),
            progress=Progress(slices_done=job.slices_done, slices_total=job.slices_total),
            created=_iso(job.created),
            started=_iso(job.started),
            finished=_iso(job.finished),
            expires_at=_iso(job.finished + store.expire_s if job.finished else None),
            status=job.status,
            error=job.error,
            report=job.report,
            links=links,
            disclaimer=DISCLAIMER,
        ).model_dump()

    def validate(upload: Path, job: Job) -> None:
        """Unpack a zipped series, then load the input as the worker will, so refusals come now."""
        if is_zip_name(job.name):
            extract_series(upload, job.input, job.name, max_unpacked_bytes)
        load_input(job.input, options)

    upload_body = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            }
        },
    }

    @api.post(
        "/segment",
        status_code=202,
        response_model=JobOut,
        openapi_extra={"requestBody": upload_body},
        responses={
            200: {"description": "?wait=true: the finished job, with its lesion report"},
            **_error(400, "unreadable upload: truncated or corrupt file, broken multipart body"),
            **_error(413, "upload larger than --max-upload-mb"),
            **_error(413, "a zip that unpacks to too much (4x the upload limit, or 100x its size)"),
            **_error(415, "not a .nii/.nii.gz/.zip file, not NIfTI inside, or a zip without DICOM"),
            **_error(
                422,
                "a NIfTI or DICOM series that mhunet cannot segment (2D, 4D, constant, bad geometry, "
                "several series, files that are not DICOM, paths outside the zip)",
            ),
            **_error(503, "store full of unfinished jobs, or the backend failed; retry later"),
            **auth_errors,
        },
    )
    async def segment(request: Request, response: Response, wait: bool = False) -> Any:
        """Upload a FLAIR NIfTI, or a zip of one DICOM series, as form field ``file``; 202 with the job
        (Location: its URL), or with ``?wait=true`` the finished job. Bad uploads are refused here,
        before they queue."""
        try:
            check_length(request, max_upload_bytes)
            job = store.reserve()
        except UploadRefused as exc:
            raise HTTPException(exc.status, str(exc)) from exc
        except StoreFull as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "10"}) from exc
        try:
            upload = await receive(request, job.folder, max_upload_bytes)
            job.name = upload.name
            await anyio.to_thread.run_sync(validate, upload.path, job, limiter=validate_limiter)
        except UploadRefused as exc:
            store.discard(job)
            raise HTTPException(exc.status, str(exc)) from exc
        except MhunetError as exc:
            status, message = http_status(exc, job.input), user_message(exc, job)
            store.discard(job)
            raise HTTPException(status, message) from exc
        except BaseException:
            store.discard(job)
            raise
        job.loop = asyncio.get_running_loop()
        store.account(job)
        worker.submit(job)
        location = f"/v1/jobs/{job.id}"
        if not wait:
            response.headers["Location"] = location
            return describe(job)
        await job.event.wait()
        if job.state == "failed":
            return JSONResponse({"detail": job.error, "job": describe(job)}, status_code=job.status or 500)
        return JSONResponse(describe(job), headers={"Location": location})

    @api.get("/jobs/{job_id}", response_model=JobOut, responses={**_error(404, "unknown id"), **auth_errors})
    def get_job(job_id: str) -> Any:
        """State (queued with position, running with slice progress, done, failed) and the report."""
        return describe(find(job_id))

    @api.get(
        "/jobs/{job_id}/{kind}",
        responses={
            **_error(404, "unknown id"),
            **_error(409, "job not done"),
            **_error(410, "expired or evicted"),
            **auth_errors,
        },
    )
    def download(job_id: str, kind: Download) -> Response:
        """mask, brain (brain mask), prob (NIfTI on the input's grid), qc (PNG), report (JSON), csv
        (lesion table); for a DICOM series upload seg (DICOM SEG on the source slices) and sr (DICOM
        SR, TID 1500)."""
        job = find(job_id)
        if job.state != "done" or job.report is None:
            raise HTTPException(409, f"job {job_id} is {job.state}; its results are not ready")
        if kind not in job.files:  # the brain mask: only when the job had one
            raise HTTPException(404, f"job {job_id} has no {kind} output ({job.report['brain']['reason']})")
        name = job.files[kind].name
        if kind == "report":
            disposition = f'attachment; filename="{name}"'
            return JSONResponse(job.report, headers={"Content-Disposition": disposition})
        return FileResponse(
            job.files[kind],
            media_type=MEDIA_TYPES[kind],
            filename=name,
            content_disposition_type="inline" if kind == "qc" else "attachment",
        )

    @app.get("/healthz", response_model=Health, responses=_error(503, "the worker thread has stopped"))
    def healthz(response: Response) -> Any:
        """Backend, model hash and engine key of the loaded model; queue length."""
        counts = store.counts()
        model = options.model_info
        alive = worker.thread.is_alive()
        response.status_code = 200 if alive else 503
        return Health(
            status="ok" if alive else "worker stopped",
            version=__version__,
            backend=backend.name,
            precision=backend.precision,
            model={"name": str(model.get("name")), "sha256": str(model.get("sha256"))},
            engine_key=backend.engine_key,
            queue_length=counts["queued"],
            running=counts["running"],
            auth_required=api_key is not None,
            max_upload_mb=max_upload_bytes / 1e6,
            disclaimer=DISCLAIMER,
        )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP})

    app.include_router(api)
    return app
