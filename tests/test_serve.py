"""`mhunet serve` over real HTTP: a server process on a loopback port, driven like a client would.

Results are held to what the CLI's code path gives on the same file (the direct pipeline, or
`mhunet infer` itself), bad uploads to the CLI's one-line messages and to nothing left in the store.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.serve_helpers import (
    REPO,
    lesion_tiny,
    multipart,
    patient26_crop,
    request,
    running_server,
    upload,
    varied_volume,
    wait_done,
)
from tests.tiny_model import PATIENT26, TWO, save_tiny

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")

KEY = "test-key-0123456789"
FORBIDDEN_WORDS = ("diagnos", "treat", "therap")


def nifti_array(data: bytes) -> np.ndarray:
    return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(data)).dataobj)


def job_folders(store: Path) -> set[str]:
    return {p.name for p in store.iterdir()}


@pytest.fixture(scope="module")
def finder(tmp_path_factory) -> Path:
    """The tiny model with post-processing that finds lesions in the synthetic scans (lesion_tiny)."""
    return lesion_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="module")
def server(tmp_path_factory, finder):
    """No API key, a 0.5 MB upload limit (the synthetic scans are ~0.1 MB), a store we can look into."""
    root = tmp_path_factory.mktemp("serve")
    store = root / "store"
    args = ("--checkpoint", str(finder), "--backend", "torch", "--device", "cpu")
    with running_server(root / "log", *args, "--store", str(store), "--max-upload-mb", "0.5") as url:
        yield url, store


@pytest.fixture(scope="module")
def direct(finder):
    """The CLI's code path in this process: same options, same backend, same batch size."""
    from mhunet_deploy.backends import load_backend
    from mhunet_deploy.pipeline import infer_options, infer_volume

    options, _ = infer_options(finder, None, None, probabilities=True, qc=True)
    with load_backend("torch", finder, device="cpu") as engine:
        options.batch_size = engine.batch_size
        yield lambda path, out: infer_volume(path, out, engine, options)


def test_health_openapi_and_page(server, finder) -> None:
    url, _ = server
    health = request(f"{url}/healthz").json()
    sha = json.loads(finder.with_suffix(".json").read_text())["sha256"]
    assert (health["backend"], health["precision"], health["model"]["sha256"]) == ("torch-cpu", "fp32", sha)
    assert health["engine_key"] is None and health["queue_length"] == 0 and not health["auth_required"]
    schema = request(f"{url}/openapi.json").json()
    assert "post" in schema["paths"]["/v1/segment"]
    assert "multipart/form-data" in schema["paths"]["/v1/segment"]["post"]["requestBody"]["content"]
    for path in ("/v1/jobs/{job_id}", "/v1/jobs/{job_id}/{kind}", "/healthz"):
        assert "get" in schema["paths"][path], path
    assert request(f"{url}/docs").status == 404  # Swagger UI would load assets from a CDN
    page = request(f"{url}/")
    text = page.body.decode()
    assert page.status == 200 and "Research use only - not for clinical use" in text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http://" not in text and "https://" not in text and "//cdn" not in text  # no external assets
    assert not any(word in text.lower() for word in FORBIDDEN_WORDS)


def test_job_lifecycle_outputs_and_report(server, direct, tmp_path) -> None:
    url, store = server
    scan = varied_volume(tmp_path / "scan one.nii.gz", seed=1)
    reply = upload(url, scan)
    assert reply.status == 202, reply.body
    job = reply.json()
    assert reply.headers["location"] == f"/v1/jobs/{job['id']}" and len(job["id"]) == 32
    assert job["state"] in ("queued", "running") and job["input"] == "scan_one.nii.gz"
    done = wait_done(url, job["id"])
    assert done["state"] == "done", done
    assert done["progress"]["slices_done"] == done["progress"]["slices_total"] == 4  # seed 1: 4 slices
    report = done["report"]
    expected = direct(scan, tmp_path / "direct")
    assert report["lesion_count"] == expected["lesion_count"] > 0
    assert report["lesions"] == expected["lesions"]
    assert report["total_volume_ml"] == expected["total_volume_ml"]
    assert (
        report["input"]["path"] == "scan_one.nii.gz" and report["model"]["checkpoint"] == "tiny.safetensors"
    )
    assert str(store) not in json.dumps(done)  # no server paths leak into what clients see
    text = json.dumps(report).lower()
    assert "not for clinical use" in text and not any(w in text for w in FORBIDDEN_WORDS)

    files = {k: request(url + link) for k, link in done["links"].items() if k != "self"}
    assert set(files) == {"mask", "prob", "qc", "report", "csv"}
    assert all(f.status == 200 for f in files.values())
    mask = nifti_array(files["mask"].body)
    np.testing.assert_array_equal(mask, np.asarray(nib.load(expected["outputs"]["mask"]).dataobj))
    assert nifti_array(files["prob"].body).dtype == np.float32
    assert files["qc"].body.startswith(b"\x89PNG") and files["qc"].headers["content-type"] == "image/png"
    assert json.loads(files["report"].body) == report
    assert 'filename="scan_one_mask.nii.gz"' in files["mask"].headers["content-disposition"]
    csv_rows = files["csv"].body.decode().strip().splitlines()
    assert csv_rows[0].startswith("id,voxels,volume_ml") and len(csv_rows) == 1 + report["lesion_count"]
    # The upload itself is not kept once its results exist.
    assert not (store / job["id"] / "scan_one.nii.gz").exists()
    # A lesion-only model has no brain mask to download; the reason is the report's.
    brain = request(f"{url}/v1/jobs/{job['id']}/brain")
    assert brain.status == 404 and "no brain output" in brain.json()["detail"], brain.body
    assert report["brain"]["source"] is None


def test_two_output_model_serves_the_brain_mask(tmp_path) -> None:
    """A model with a brain output: the job links, downloads and reports its brain mask as infer does."""
    ckpt = save_tiny(tmp_path / "two.safetensors", outputs=TWO)
    scan = varied_volume(tmp_path / "scan.nii.gz", seed=2)
    with running_server(
        tmp_path / "log", "--checkpoint", str(ckpt), "--backend", "torch", "--device", "cpu"
    ) as url:
        reply = upload(url, scan, wait=True)
        assert reply.status == 200, reply.body
        job = reply.json()
        brain = request(url + job["links"]["brain"])
    cli = subprocess.run(
        [sys.executable, "-m", "mhunet_deploy.cli", "infer", str(scan), "-o", str(tmp_path / "cli")]
        + ["--checkpoint", str(ckpt), "--backend", "torch", "--device", "cpu", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert cli.returncode == 0, cli.stderr
    expected = json.loads(cli.stdout)["results"][0]
    assert brain.status == 200 and 'filename="scan_brain.nii.gz"' in brain.headers["content-disposition"]
    np.testing.assert_array_equal(nifti_array(brain.body), nib.load(expected["outputs"]["brain"]).dataobj)
    assert job["report"]["brain"] == expected["brain"] and expected["brain"]["source"] == "model"
    assert job["report"]["outputs"]["brain"] == f"/v1/jobs/{job['id']}/brain"


def bad_uploads(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Name -> (bytes, expected status) of uploads the server must refuse."""
    good = varied_volume(folder / "good.nii.gz", seed=3).read_bytes()
    png = io.BytesIO()
    from PIL import Image

    Image.new("L", (64, 64)).save(png, format="PNG")
    flat = nib.Nifti1Image(np.random.default_rng(0).normal(size=(40, 48, 1)).astype(np.float32), np.eye(4))
    return {
        "photo.nii.gz": (png.getvalue(), 415),  # content is not NIfTI
        "cut.nii.gz": (good[: len(good) // 2], 400),  # truncated gzip
        "flat.nii.gz": (gzip.compress(flat.to_bytes()), 422),  # a 2D image
    }


def test_bad_uploads_get_the_cli_message_and_leave_nothing(server, finder, tmp_path) -> None:
    url, store = server
    folder = tmp_path / "bad"
    folder.mkdir()
    cases = bad_uploads(folder)
    for name, (data, _) in cases.items():
        (folder / name).write_bytes(data)
    # The CLI on the same files, run where they lie, so its messages name them as the server does.
    cli = subprocess.run(
        [sys.executable, "-m", "mhunet_deploy.cli", "infer", *cases, "-o", "out", "--json"]
        + ["--checkpoint", str(finder), "--backend", "torch", "--device", "cpu"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert cli.returncode == 6, cli.stderr
    cli_errors = {Path(f["input"]).name: f["error"] for f in json.loads(cli.stdout)["failures"]}
    before = job_folders(store)
    for name, (_, status) in cases.items():
        reply = upload(url, folder / name)
        assert (name, reply.status) == (name, status), reply.body
        assert reply.json()["detail"] == cli_errors[name]
    assert job_folders(store) == before


def test_error_classes_map_to_http_statuses(tmp_path) -> None:
    """The rule behind the statuses above, for the classes a client cannot provoke on purpose."""
    from mhunet_deploy.errors import BackendError, InputError, OutputError
    from mhunet_deploy.serve.jobs import http_status

    nifti = varied_volume(tmp_path / "scan.nii.gz", seed=0)
    text = tmp_path / "text.nii.gz"
    text.write_text("not a scan")
    unreadable = InputError("cannot read")
    unreadable.__cause__ = EOFError("truncated")
    assert http_status(unreadable, nifti) == 400
    assert http_status(InputError("not NIfTI"), text) == 415
    assert http_status(InputError("2D"), nifti) == 422
    assert http_status(OutputError("disk full"), nifti) == 500
    assert http_status(BackendError("no GPU"), nifti) == 503


def test_refused_before_or_while_receiving(server, tmp_path) -> None:
    url, store = server
    before = job_folders(store)
    scan = varied_volume(tmp_path / "scan.nii.gz", seed=4)
    body, ctype = multipart("scan.nii.gz", scan.read_bytes() + b"\0" * 600_000)
    notes, notes_type = multipart("notes.txt", b"hello", field="notes")
    refusals = {
        "wrong name": (
            upload(url, scan, name="scan.png"),
            415,
            "scan.png is not a .nii, .nii.gz or .zip file",
        ),
        "too large": (request(f"{url}/v1/segment", "POST", body, {"Content-Type": ctype}), 413, "0.5 MB"),
        # No Content-Length: the limit is enforced while streaming.
        "too large, chunked": (
            request(
                f"{url}/v1/segment",
                "POST",
                iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
                {"Content-Type": ctype},
            ),
            413,
            "0.5 MB",
        ),
        "not multipart": (
            request(f"{url}/v1/segment", "POST", scan.read_bytes(), {"Content-Type": "application/gzip"}),
            415,
            "multipart/form-data",
        ),
        "no file field": (
            request(f"{url}/v1/segment", "POST", notes, {"Content-Type": notes_type}),
            400,
            "no file in the upload",
        ),
        "truncated body": (
            request(f"{url}/v1/segment", "POST", body[:5000], {"Content-Type": ctype}),
            400,
            "ended before the file was complete",
        ),
    }
    for case, (reply, status, words) in refusals.items():
        assert reply.status == status, (case, reply.body)
        assert words in reply.json()["detail"], case
    assert job_folders(store) == before


def test_concurrent_requests_are_not_mixed_up(server, direct, tmp_path) -> None:
    url, _ = server
    scans = [varied_volume(tmp_path / f"v{seed}.nii.gz", seed) for seed in range(8)]

    def run(scan: Path) -> tuple[dict, np.ndarray]:
        reply = upload(url, scan, wait=True)
        assert reply.status == 200, reply.body
        job = reply.json()
        return job["report"], nifti_array(request(url + job["links"]["mask"]).body)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, scans))
    for scan, (report, mask) in zip(scans, results, strict=True):
        expected = direct(scan, tmp_path / scan.stem)
        assert report["input"]["path"] == scan.name
        assert report["lesions"] == expected["lesions"], scan.name
        np.testing.assert_array_equal(mask, np.asarray(nib.load(expected["outputs"]["mask"]).dataobj))
    assert len({len(r["lesions"]) for r, _ in results}) > 1  # the scans really give different results


def test_queue_positions_and_progress(server, tmp_path) -> None:
    url, _ = server
    scans = [varied_volume(tmp_path / f"q{seed}.nii.gz", seed) for seed in range(10, 14)]
    jobs = [upload(url, scan).json() for scan in scans]
    queued = [j["queue_position"] for j in jobs if j["state"] == "queued"]
    assert all(j["state"] in ("queued", "running") for j in jobs)
    assert queued == sorted(queued) and all(p >= 1 for p in queued)
    for j in jobs:
        done = wait_done(url, j["id"])
        assert done["state"] == "done" and done["queue_position"] is None
        assert done["progress"]["slices_done"] == done["progress"]["slices_total"]


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory, finder):
    """API key from the environment, a store of 2 jobs whose results expire after 4 s."""
    root = tmp_path_factory.mktemp("keyed")
    args = ("--checkpoint", str(finder), "--backend", "torch", "--device", "cpu", "--store", str(root / "s"))
    limits = ("--max-jobs", "2", "--expire-s", "4")
    with running_server(root / "log", *args, *limits, env={"MHUNET_API_KEY": KEY}) as url:
        yield url, root / "s"


def test_api_key_required_when_set(keyed_server, tmp_path) -> None:
    url, _ = keyed_server
    scan = varied_volume(tmp_path / "scan.nii.gz", seed=5)
    assert request(f"{url}/healthz").json()["auth_required"] is True
    assert request(f"{url}/").status == 200  # the page itself shows no data; it asks for the key
    assert upload(url, scan).status == 401
    assert upload(url, scan, key="wrong").status == 401
    reply = upload(url, scan, key=KEY, wait=True)
    assert reply.status == 200, reply.body
    links = reply.json()["links"]
    assert request(url + links["self"]).status == 401
    assert request(url + links["mask"], headers={"X-API-Key": "x" + KEY}).status == 401
    assert request(url + links["mask"], headers={"X-API-Key": KEY}).status == 200


def test_store_evicts_oldest_then_expires(keyed_server, tmp_path) -> None:
    url, store = keyed_server
    key = {"X-API-Key": KEY}
    ids = []
    for seed in range(3):
        reply = upload(url, varied_volume(tmp_path / f"e{seed}.nii.gz", seed), key=KEY, wait=True)
        assert reply.status == 200, reply.body
        ids.append(reply.json()["id"])
    assert len(job_folders(store)) <= 2
    gone = request(f"{url}/v1/jobs/{ids[0]}", headers=key)
    assert gone.status == 410 and "make room for newer jobs" in gone.json()["detail"]
    assert request(f"{url}/v1/jobs/{ids[2]}", headers=key).status == 200
    time.sleep(4.5)
    expired = request(f"{url}/v1/jobs/{ids[2]}/mask", headers=key)
    assert expired.status == 410 and "expired" in expired.json()["detail"]
    assert job_folders(store) == set()
    unknown = request(f"{url}/v1/jobs/{'0' * 32}", headers=key)
    assert unknown.status == 404 and "no job" in unknown.json()["detail"]


def serve_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mhunet_deploy.cli", "serve", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_refuses_to_start_open_beyond_loopback_or_on_a_busy_port() -> None:
    res = serve_cli("--host", "0.0.0.0", "--port", "0")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: --host 0.0.0.0 can be reached from other machines; set an API key (--api-key or "
        "MHUNET_API_KEY), or pass --insecure to serve without one"
    ]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = serve_cli("--port", str(port))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port} (Address already in use); choose another --port"
    ]


@pytest.mark.skipif(not PATIENT26.exists(), reason="../shared/data/open_ms/patient26 absent")
def test_shared_scan_matches_mhunet_infer(tmp_path) -> None:
    """The packaged model on real FLAIR slices: the server's outputs are the CLI's, byte for byte."""
    scan = patient26_crop(tmp_path / "patient26_crop.nii.gz")
    args = ("--backend", "torch", "--device", "cpu")
    with running_server(tmp_path / "log", *args) as url:
        reply = upload(url, scan, wait=True)
        assert reply.status == 200, reply.body
        job = reply.json()
        mask = request(url + job["links"]["mask"]).body
    cli = subprocess.run(
        [sys.executable, "-m", "mhunet_deploy.cli", "infer", str(scan), "-o", str(tmp_path / "cli")]
        + ["--qc", "--probabilities", "--json", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert cli.returncode == 0, cli.stderr
    expected = json.loads(cli.stdout)["results"][0]
    report = job["report"]
    assert report["lesion_count"] == expected["lesion_count"] > 0
    assert report["lesions"] == expected["lesions"]
    assert report["model"]["sha256"] == expected["model"]["sha256"]
    np.testing.assert_array_equal(nifti_array(mask), nib.load(expected["outputs"]["mask"]).dataobj)


@pytest.mark.slow
def test_load_test_loses_nothing(tmp_path) -> None:
    """scripts/load_test_serve.py, bounded: 50 requests at concurrency 4 on the tiny model."""
    res = subprocess.run(
        [sys.executable, "-m", "scripts.load_test_serve", "--requests", "50", "--concurrency", "4"]
        + ["--json", str(tmp_path / "load.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads((tmp_path / "load.json").read_text())
    assert result["ok"] == result["requests"] == 50 and result["wrong"] == 0 and result["failed"] == 0
