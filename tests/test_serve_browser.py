"""The `mhunet serve` page in headless Chromium (Debian's chromium package), driven over the DevTools
protocol: enter the API key, upload a scan through the form, wait for the result, check the lesion
table and the QC image, and take a screenshot (MHUNET_SCREENSHOT=path also saves it there; that is
how docs/serve_page.png is made)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from base64 import b64decode
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from tests.dicom_helpers import CLINICAL, clinical_crop, write_series, zip_of
from tests.serve_helpers import patient26_crop, request, running_server
from tests.tiny_model import PATIENT26

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is absent (apt-get install chromium)"),
    pytest.mark.skipif(not PATIENT26.exists(), reason="../shared/data/open_ms/patient26 absent"),
    pytest.mark.skipif(not CLINICAL.exists(), reason=f"{CLINICAL} absent"),
]
KEY = "browser-test-key"
WIDTH = 1280
SHOWN_DOWNLOADS = (
    "[...document.querySelectorAll('.downloads a')].filter((a) => !a.hidden).map((a) => a.dataset.kind)"
)
TABLE_TEXT = (
    "[...document.querySelectorAll('#lesions tbody tr')]"
    ".map((row) => [...row.cells].map((cell) => cell.textContent))"
)


class DevTools:
    """Just enough of the Chrome DevTools Protocol: send a command on a page's socket, await its reply."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.last_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        self.ws.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while True:  # events arrive in between; they are not needed here
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.last_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def until(self, expression: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := self.js(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(expression)
            time.sleep(0.1)
        return value

    def choose_file(self, selector: str, path: Path) -> None:
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", nodeId=node, files=[str(path)])


@contextmanager
def chromium(profile: Path) -> Iterator[DevTools]:
    """Headless Chromium on a DevTools port it picks itself (read back from DevToolsActivePort)."""
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        + ["--no-first-run", "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start its DevTools server")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.loads(request(f"http://127.0.0.1:{port}/json/list").body)
        page = next(t for t in targets if t["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            yield DevTools(ws)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_page_uploads_and_shows_the_result(tmp_path) -> None:
    scan = patient26_crop(tmp_path / "patient26_crop.nii.gz")
    not_nifti = tmp_path / "notes.nii.gz"
    not_nifti.write_text("not a scan")
    args = ("--backend", "torch", "--device", "cpu", "--api-key", KEY)
    with running_server(tmp_path / "log", *args) as url, chromium(tmp_path / "profile") as page:
        page.call(
            "Emulation.setDeviceMetricsOverride", width=WIDTH, height=900, deviceScaleFactor=1, mobile=False
        )
        page.call("Page.navigate", url=url + "/")
        page.until("document.getElementById('meta')?.textContent.includes('sha256')")  # loaded
        banner = page.js("document.getElementById('banner').getBoundingClientRect().height")
        assert banner > 0 and page.js("document.getElementById('banner').textContent") == (
            "Research use only - not for clinical use"
        )
        assert page.js("document.getElementById('key').hidden") is False  # the server wants a key
        page.js(f"document.getElementById('key').value = {json.dumps(KEY)}")

        # A refused upload shows the server's one-line message.
        page.choose_file("#file", not_nifti)
        page.js("document.getElementById('submit').click()")
        page.until("document.body.dataset.state === 'failed'")
        assert page.js("document.getElementById('error').textContent") == (
            "notes.nii.gz is not a NIfTI file (no NIfTI header magic); convert the scan to .nii.gz first"
        )

        page.choose_file("#file", scan)
        page.js("document.getElementById('submit').click()")
        seen = set()
        deadline = time.monotonic() + 600
        while (state := page.js("document.body.dataset.state")) not in ("done", "failed"):
            seen.add(state)
            assert time.monotonic() < deadline, "the page never showed a result"
            time.sleep(0.1)
        assert state == "done", page.js("document.getElementById('error').textContent")
        assert seen & {"uploading", "queued", "running"}
        report = page.js("job.report")
        rows = page.js(TABLE_TEXT)
        assert report["lesion_count"] > 0 and len(rows) == report["lesion_count"]
        for row, lesion in zip(rows, report["lesions"], strict=True):
            assert row[:3] == [str(lesion["id"]), f"{lesion['volume_ml']:.3f}", str(lesion["voxels"])]
        assert page.js("document.getElementById('count').textContent") == str(report["lesion_count"])
        assert page.js("document.getElementById('qc').naturalWidth") > 1000  # the montage, decoded
        # The brain volume as the report has it: the packaged weights have a brain output, so its mask
        # is among the downloads; a lesion-only model would show "none" and the reason on hover.
        brain = report["brain"]
        assert brain["source"] == ("model" if "brain" in report["model"]["outputs"] else None)
        shown_brain = page.js("document.getElementById('brain').textContent")
        assert shown_brain == (f"{brain['volume_ml']:.0f}" if brain["source"] else "none")
        assert page.js("document.getElementById('brain-link').hidden") is (brain["source"] is None)
        if brain["source"]:
            assert page.js("fetchFile('brain').then((f) => f.name)") == "patient26_crop_brain.nii.gz"
        # The page's download path (with the key): the mask under the server's file name.
        assert page.js("fetchFile('mask').then((f) => f.name + ' ' + f.blob.size)").startswith(
            "patient26_crop_mask.nii.gz "
        )
        shown = page.js(SHOWN_DOWNLOADS)  # the links the job has, and no DICOM outputs for a NIfTI
        assert set(shown) == set(page.js("job.links")) - {"self", "qc"} and not {"seg", "sr"} & set(shown)
        text = page.js("document.body.innerText").lower()
        assert not any(word in text for word in ("diagnos", "treat", "therap"))

        height = page.js("document.documentElement.scrollHeight")
        page.call(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        png = b64decode(page.call("Page.captureScreenshot", format="png")["data"])

        # A zipped DICOM series through the same page: the DICOM SEG is among the downloads.
        write_series(tmp_path / "flair", *clinical_crop(slice(8, 11)))
        page.choose_file("#file", zip_of(tmp_path / "flair.zip", tmp_path / "flair"))
        page.js("document.getElementById('submit').click()")
        page.until("['done', 'failed'].includes(document.body.dataset.state)", timeout=600)
        assert page.js("document.body.dataset.state") == "done", page.js("job.error")
        assert set(page.js(SHOWN_DOWNLOADS)) == set(shown) | {"seg", "sr"}
        assert page.js("fetchFile('seg').then((f) => f.name)") == "flair_seg.dcm"
    assert png.startswith(b"\x89PNG")
    (tmp_path / "serve_page.png").write_bytes(png)
    if os.environ.get("MHUNET_SCREENSHOT"):
        Path(os.environ["MHUNET_SCREENSHOT"]).write_bytes(png)
