"""`mhunet serve` with a zip of one DICOM series: the SEG among the downloads, and the refusals.

A real server process on a loopback port gets zips made here from the oblique clinical FLAIR
(shuffled file names, a top folder as a zip of a folder has); its mask and SEG are held to what
`mhunet infer` writes for the same series folder. Bad zips (bombs, hostile paths, several series, no
geometry, members that are not DICOM, not a zip at all) get one line, the HTTP status of their class,
and leave nothing in the store or outside it.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.dicom_helpers import CLINICAL, clinical_crop, needs_highdicom, seg_on_grid, write_series, zip_of
from tests.serve_helpers import REPO, lesion_tiny, request, running_server, upload

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
pytestmark = [
    needs_highdicom,
    pytest.mark.skipif(not CLINICAL.exists(), reason=f"{CLINICAL} is absent (shared data not mounted)"),
]
UPLOAD_MB = 1.0  # the server's limit; a zip may unpack to 4 MB
SLICES = slice(8, 11)


@pytest.fixture(scope="module")
def finder(tmp_path_factory) -> Path:
    # Real slices: fewer, larger lesions than the synthetic scans' settings would find (a few dozen).
    return lesion_tiny(
        tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", threshold=0.019, min_lesion_mm3=100
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory, finder):
    root = tmp_path_factory.mktemp("serve")
    args = ("--checkpoint", str(finder), "--backend", "torch", "--device", "cpu", "--store")
    with running_server(root / "log", *args, str(root / "store"), "--max-upload-mb", str(UPLOAD_MB)) as url:
        yield url, root / "store"


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dicom") / "flair"
    write_series(folder, *clinical_crop(SLICES))
    return folder


def test_zipped_series_gives_the_seg_of_mhunet_infer(server, finder, series, tmp_path) -> None:
    url, store = server
    archive = zip_of(tmp_path / "flair series.zip", series)
    assert archive.stat().st_size < UPLOAD_MB * 1e6
    reply = upload(url, archive, wait=True)
    assert reply.status == 200, reply.body
    job = reply.json()
    assert job["input"] == job["report"]["input"]["path"] == "flair_series.zip"
    assert {"mask", "seg", "sr", "report"} <= set(job["links"])
    seg, sr = request(url + job["links"]["seg"]), request(url + job["links"]["sr"])
    for kind, reply in (("seg", seg), ("sr", sr)):
        assert reply.status == 200 and reply.headers["content-type"] == "application/dicom", kind
        assert f'filename="flair_series_{kind}.dcm"' in reply.headers["content-disposition"]
        assert reply.body[128:132] == b"DICM"
    (tmp_path / "served_seg.dcm").write_bytes(seg.body)
    (tmp_path / "served_mask.nii.gz").write_bytes(request(url + job["links"]["mask"]).body)
    assert not (store / job["id"] / "series").exists()  # the unpacked upload is removed once done

    cli = subprocess.run(
        [sys.executable, "-m", "mhunet_deploy.cli", "infer", str(series), "-o", str(tmp_path / "cli")]
        + ["--checkpoint", str(finder), "--backend", "torch", "--device", "cpu", "--json", "--quiet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert cli.returncode == 0, cli.stderr
    expected = json.loads(cli.stdout)["results"][0]
    assert job["report"]["lesions"] == expected["lesions"] and expected["lesion_count"] > 0
    mask = nib.load(expected["outputs"]["mask"])
    served = nib.load(tmp_path / "served_mask.nii.gz")
    np.testing.assert_array_equal(np.asarray(served.dataobj), np.asarray(mask.dataobj))
    np.testing.assert_allclose(served.affine, mask.affine)
    np.testing.assert_array_equal(seg_on_grid(tmp_path / "served_seg.dcm", mask), np.asarray(mask.dataobj))
    np.testing.assert_array_equal(
        seg_on_grid(tmp_path / "served_seg.dcm", mask), seg_on_grid(Path(expected["outputs"]["seg"]), mask)
    )


def bad_zips(series: Path, folder: Path) -> dict[str, tuple[Path, int, str]]:
    """Name -> (zip, expected status, words of the message) of zips the server must refuse."""
    good = zip_of(folder / "good.zip", series).read_bytes()
    dense = (np.random.default_rng(0).random(4_500_000) < 0.05).astype(np.uint8)  # deflates ~16:1
    other, no_position, no_frame = folder / "other", folder / "no_position", folder / "no_frame"
    write_series(other, *clinical_crop(slice(2, 4)), description="T2")
    write_series(
        no_position, *clinical_crop(SLICES), edit=lambda k, ds: k == 1 and delattr(ds, "ImagePositionPatient")
    )
    write_series(no_frame, *clinical_crop(SLICES), edit=lambda k, ds: delattr(ds, "FrameOfReferenceUID"))
    two = zip_of(folder / "two.zip", series, {f"other/{p.name}": p.read_bytes() for p in other.iterdir()})
    nifti = io.BytesIO(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)).to_bytes())
    (folder / "photo.zip").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (folder / "cut.zip").write_bytes(good[: len(good) // 2])
    return {
        "not a zip": (folder / "photo.zip", 415, "photo.zip is not a zip archive"),
        "truncated zip": (folder / "cut.zip", 400, "cut.zip cannot be unpacked"),
        "zip bomb": (
            zip_of(folder / "bomb.zip", members={"flair/zeros.dcm": bytes(20_000_000)}),  # deflates ~1000:1
            413,
            "bomb.zip unpacks to more than 1.96 MB (the limit: 100x the zip's size",
        ),
        "too much in all": (
            zip_of(folder / "dense.zip", series, {"flair/dense.dcm": dense.tobytes()}),
            413,
            "dense.zip unpacks to more than 4 MB (the limit: 100x the zip's size, at most 4 MB)",
        ),
        "parent path": (
            zip_of(folder / "up.zip", series, {"../../escaped.dcm": good[:1000]}),
            422,
            "up.zip holds '../../escaped.dcm', a path outside the zip",
        ),
        "absolute path": (
            zip_of(folder / "abs.zip", series, {"/tmp/escaped.dcm": good[:1000]}),
            422,
            "abs.zip holds '/tmp/escaped.dcm', a path outside the zip",
        ),
        "not DICOM member": (
            zip_of(folder / "notes.zip", series, {"flair/notes.txt": b"scanned on Monday"}),
            422,
            "notes.zip holds flair_notes.txt, which is not a DICOM file; zip one DICOM series only",
        ),
        "no DICOM": (
            zip_of(folder / "nifti.zip", members={"scan.nii": nifti.getvalue()}),
            415,
            "nifti.zip holds no DICOM files",
        ),
        "several series": (two, 422, "two.zip holds 2 series: "),
        "missing geometry": (
            zip_of(folder / "nopos.zip", no_position),
            422,
            "lacks ImagePositionPatient; the slice cannot be placed",
        ),
        "no frame of reference": (
            zip_of(folder / "noframe.zip", no_frame),
            422,
            "noframe.zip: the slices lack FrameOfReferenceUID",
        ),
    }


def test_bad_zips_get_one_line_and_leave_nothing(server, series, tmp_path) -> None:
    url, store = server
    before = {p.name for p in store.iterdir()}
    for case, (archive, status, words) in bad_zips(series, tmp_path).items():
        assert archive.stat().st_size < UPLOAD_MB * 1e6, case
        reply = upload(url, archive)
        message = reply.json()["detail"]
        assert (case, reply.status) == (case, status), message
        assert words in message and "\n" not in message, (case, message)
        assert str(store) not in message and "--" not in message, (case, message)  # no CLI options
    assert {p.name for p in store.iterdir()} == before
    assert not list(store.parent.rglob("escaped.dcm")) and not Path("/tmp/escaped.dcm").exists()


def test_several_series_message_says_what_a_client_can_do(server, series, tmp_path) -> None:
    url, _ = server
    archive, _, _ = bad_zips(series, tmp_path)["several series"]
    message = upload(url, archive).json()["detail"]
    assert message.endswith("; zip one series per upload") and "FLAIR, 3 slices" in message, message


def test_unpacking_stops_at_the_limit_whatever_the_zip_declares(tmp_path) -> None:
    """A member whose header understates its size: zipfile stops at the declared size and its CRC
    check fails, so the zip is refused as damaged and nothing past the limit is written."""
    from mhunet_deploy.serve.archive import extract_series
    from mhunet_deploy.serve.upload import UploadRefused

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", b"\0" * 5_000_000)
    data = bytearray(buffer.getvalue())
    # Rewrite the uncompressed size (local header offset 22, central directory offset 24) to 1000.
    data[22:26] = (1000).to_bytes(4, "little")
    central = data.rindex(b"PK\x01\x02")
    data[central + 24 : central + 28] = (1000).to_bytes(4, "little")
    archive = tmp_path / "liar.zip"
    archive.write_bytes(bytes(data))
    with pytest.raises(UploadRefused) as info:
        extract_series(archive, tmp_path / "out", "liar.zip", max_bytes=10_000_000)
    assert info.value.status == 400 and "liar.zip cannot be unpacked" in str(info.value)
    assert not (tmp_path / "out").exists() and not archive.exists()
