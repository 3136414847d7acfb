"""Issue #6 corpus through the real `mhunet` command: every bad input, output and backend problem
ends in one line and its exit code with nothing partial written; odd but valid inputs keep geometry.

Everything is generated here (nothing binary is committed). Inputs are tiny and batched, so the file
costs a few model runs of the tiny checkpoint.
"""

from __future__ import annotations

import _ctypes
import errno
import json
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mhunet_deploy import cli
from mhunet_deploy.engine import FLAVORS
from mhunet_deploy.engine.cache import engine_path
from mhunet_deploy.engine.plugin_library import plugin_library_problem
from mhunet_deploy.graphs import find_graph
from tests.cli_helpers import mhunet
from tests.corpus import BAD_INPUTS
from tests.tiny_model import TinyExport

ROOT = Path(__file__).resolve().parents[1]


def _noise(shape: tuple[int, ...], dtype: type = np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(20, 200, shape).astype(dtype)


def _save(path: Path, img: nib.Nifti1Image) -> Path:
    nib.save(img, path)
    return path


def _slug(case: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", case.lower()).strip("_")


def _lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip()]


def _assert_one_error_line(res: subprocess.CompletedProcess, code: int, words: str) -> None:
    lines = _lines(res.stderr)
    assert res.returncode == code, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines


# --- bad inputs: one batch over the whole corpus --------------------------------------------------

#: Issue #6 input case -> (generator in tests/corpus.py BAD_INPUTS, words of its message).
CORPUS = {
    "not a NIfTI": ("text named .nii.gz", "is not a NIfTI file"),
    "truncated .nii.gz": ("truncated gzip", "truncated or corrupt"),
    "2D image": ("2D", "is 2D"),
    "4D series": ("4D several volumes", "pick one with --volume-index"),
    "NaN voxels": ("nan voxel", "NaN or infinite voxels"),
    "Inf voxels": ("inf voxel", "NaN or infinite voxels"),
    "all-zero volume": ("all zero", "is constant"),
    "absurd dimensions": ("axis too long", "declares an implausible size"),
    "RGB": ("rgb", "has voxel type RGB"),
    "complex": ("complex", "has voxel type complex"),
    "zero voxel size, no sform": ("zero voxel size, qform only", "no sform to take the geometry from"),
}


def test_batch_over_the_bad_input_corpus(tmp_path: Path, tiny: Path) -> None:
    """Each bad file: one line and exit code 2 in the summary; the batch goes on and exits 6."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case, (generator, _) in CORPUS.items():
        workdir = tmp_path / "make" / _slug(case)
        workdir.mkdir(parents=True)
        made = BAD_INPUTS[generator][0](workdir)
        made.rename(inputs / f"{_slug(case)}{''.join(made.suffixes)}")
    out = tmp_path / "out"
    res = mhunet("infer", str(inputs), "-o", str(out), "--checkpoint", str(tiny), "--json", "--quiet")
    assert res.returncode == 6, res.stderr
    failures = {Path(f["input"]).name.split(".")[0]: f for f in json.loads(res.stdout)["failures"]}
    assert set(failures) == {_slug(c) for c in CORPUS}
    for case, (_, words) in CORPUS.items():
        failure = failures[_slug(case)]
        assert failure["exit_code"] == 2 and words in failure["error"], (case, failure)
        assert "\n" not in failure["error"] and "; " in failure["error"], failure
    lines = _lines(res.stderr)
    assert len(lines) == len(CORPUS) + 1 and lines[-1] == f"{len(CORPUS)} of {len(CORPUS)} inputs failed"
    assert all(ln.startswith("error: ") for ln in lines[:-1])
    assert not out.exists()  # no partial output of any file, nor the folder this run created


@pytest.mark.parametrize("inputs", [1, 2])
@pytest.mark.parametrize("folder", ["new nested", "existing empty", "existing with a file"])
def test_all_bad_inputs_leave_no_folder_behind(tmp_path: Path, tiny: Path, inputs: int, folder: str) -> None:
    """The output folder is created before the inputs are read; if none of them wrote anything, a
    folder this run created (parents too) is removed, one that existed stays as it was."""
    bad = [
        _save(tmp_path / f"zero{i}.nii.gz", nib.Nifti1Image(np.zeros((8, 8, 4)), np.eye(4)))
        for i in range(inputs)
    ]
    root = tmp_path / "runs"
    out = root / "today" if folder == "new nested" else root
    if folder != "new nested":
        root.mkdir()
    if folder == "existing with a file":
        (root / "notes.txt").write_text("keep me")
    res = mhunet("infer", *map(str, bad), "-o", str(out), "--checkpoint", str(tiny), "--quiet")
    assert res.returncode == (2 if inputs == 1 else 6), res.stderr
    if folder == "new nested":
        assert not root.exists()
    else:
        expected = ["notes.txt"] if folder == "existing with a file" else []
        assert sorted(p.name for p in root.iterdir()) == expected
        assert folder == "existing empty" or (root / "notes.txt").read_text() == "keep me"


# --- odd but valid inputs: accepted, geometry kept, --verbose says what it saw ---------------------


def _oblique_left_handed() -> np.ndarray:
    angle = np.radians(17.0)
    c, s = np.cos(angle), np.sin(angle)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[-c, 0, s], [0, 1, 0], [s, 0, c]]) @ np.diag([0.9, 1.1, 3.0])
    affine[:3, 3] = [40.0, -30.0, 12.0]
    assert np.linalg.det(affine[:3, :3]) < 0
    return affine


def test_odd_valid_inputs_keep_geometry_and_verbose_logs_it(tmp_path: Path, tiny: Path) -> None:
    shape = (24, 28, 3)
    oblique = _save(tmp_path / "oblique_lh.nii.gz", nib.Nifti1Image(_noise(shape), _oblique_left_handed()))
    scaled_img = nib.Nifti1Image(_noise(shape, np.int16), np.diag([1.0, 1.0, 2.5, 1.0]))
    scaled_img.header.set_slope_inter(0.25, -10.0)
    scaled = _save(tmp_path / "int16_scaled.nii", scaled_img)
    no_forms = _save(tmp_path / "no_forms.nii", nib.Nifti1Image(_noise(shape), None))
    assert nib.load(no_forms).header["qform_code"] == nib.load(no_forms).header["sform_code"] == 0
    out = tmp_path / "out"
    args = ("infer", str(oblique), str(scaled), str(no_forms), "-o", str(out), "--checkpoint", str(tiny))
    res = mhunet(*args, "--json", "--verbose")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)  # --json keeps stdout pure JSON; logs go to stderr
    assert len(summary["results"]) == 3 and summary["failures"] == []
    for src in (oblique, scaled, no_forms):
        stem = src.name.split(".")[0]
        ref, mask = nib.load(src), nib.load(out / f"{stem}_mask.nii.gz")
        assert mask.shape == ref.shape and mask.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(mask.affine, ref.affine)
        for code in ("qform_code", "sform_code"):
            assert mask.header[code] == ref.header[code]
    warnings = {Path(r["input"]["path"]).name: r["warnings"] for r in summary["results"]}
    assert warnings["oblique_lh.nii.gz"] == [] and warnings["int16_scaled.nii"] == []
    assert "neither qform nor sform" in warnings["no_forms.nii"][0]
    assert "warning: no_forms.nii has neither qform nor sform" in res.stderr
    log = res.stderr
    assert "oblique 17.0 deg, left-handed" in log and "int16 scaled x0.25 -10" in log
    assert "--backend auto chose" in log and re.search(r"total \d+\.\d\d s; wrote", log)


def test_quiet_and_verbose_exclude_each_other(tmp_path: Path) -> None:
    res = mhunet("infer", str(tmp_path / "x.nii.gz"), "--quiet", "--verbose")
    assert res.returncode == 2 and "exclude each other" in res.stderr


# --- outputs: refused before the model runs, or removed again when writing fails ------------------


def _volume(path: Path, seed: int = 0) -> Path:
    return _save(path, nib.Nifti1Image(_noise((20, 22, 2), seed=seed), np.diag([1.0, 1.0, 3.0, 1.0])))


def test_output_folder_that_is_the_input_file(tmp_path: Path, tiny: Path) -> None:
    vol = _volume(tmp_path / "v.nii.gz")
    before = vol.read_bytes()
    res = mhunet("infer", str(vol), "-o", str(vol), "--checkpoint", str(tiny))
    _assert_one_error_line(res, 3, "is a file, not a folder")
    assert vol.read_bytes() == before


def test_batch_output_that_would_overwrite_another_input(tmp_path: Path, tiny: Path) -> None:
    (tmp_path / "out").mkdir()
    earlier = _volume(tmp_path / "out" / "v_mask.nii.gz")  # e.g. a mask of a previous run given back
    before = earlier.read_bytes()
    vol = _volume(tmp_path / "v.nii.gz")
    res = mhunet("infer", str(earlier), str(vol), "-o", str(tmp_path / "out"), "--checkpoint", str(tiny))
    _assert_one_error_line(res, 3, "would overwrite the input")
    assert earlier.read_bytes() == before and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "v_mask.nii.gz"
    ]


def test_batch_inputs_with_the_same_name(tmp_path: Path, tiny: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        _volume(tmp_path / sub / "scan.nii.gz")
    res = mhunet("infer", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "out"))
    _assert_one_error_line(res, 3, "would write the same outputs")


def _without_dac_override() -> list[str] | None:
    """A command prefix under which this user obeys permission bits (root normally ignores them)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_read_only_output_folder(tmp_path: Path, tiny: Path) -> None:
    prefix = _without_dac_override()
    if prefix is None:
        pytest.skip("running as root without setpriv: permission bits cannot be enforced")
    vol = _volume(tmp_path / "v.nii.gz")
    out = tmp_path / "readonly"
    out.mkdir()
    out.chmod(0o555)
    try:
        cmd = [*prefix, sys.executable, "-m", "mhunet_deploy.cli", "infer", str(vol), "-o", str(out)]
        res = subprocess.run([*cmd, "--checkpoint", str(tiny)], capture_output=True, text=True, timeout=300)
        _assert_one_error_line(res, 3, f"cannot write to folder {out} (Permission denied)")
        assert list(out.iterdir()) == []
        # A folder still to be created under a read-only one fails the same way, before any work.
        res = subprocess.run(
            [*cmd[:-1], str(out / "new"), "--checkpoint", str(tiny)], capture_output=True, text=True
        )
        _assert_one_error_line(res, 3, "Permission denied")
    finally:
        out.chmod(0o755)


def test_disk_full_mid_write_removes_that_inputs_outputs(
    tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The OS boundary fails: fsync of the first input's report says ENOSPC, as a full disk does.

    Its mask was already in place and is removed again; the second input is written in full; the
    batch exits 6 with the one-line reason in the summary.
    """
    first, second = _volume(tmp_path / "first.nii.gz"), _volume(tmp_path / "second.nii.gz", seed=1)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("first_report.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the file being synced")
    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "out"
    args = ["mhunet", "infer", str(first), str(second), "-o", str(out), "--checkpoint", str(tiny), "--json"]
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 6
    summary = json.loads(capsys.readouterr().out)
    (failure,) = summary["failures"]
    assert failure["exit_code"] == 3 and failure["error"].startswith("no space left on the device writing")
    assert sorted(p.name for p in out.iterdir()) == [
        "second_lesions.csv",
        "second_mask.nii.gz",
        "second_report.json",
    ]


# --- backend: plugin library and engine cache, refused before TensorRT is needed -------------------


def _foreign_arch_library(path: Path) -> Path:
    """A real shared library with its ELF machine field set to another CPU, as a cross build has."""
    blob = bytearray(Path(_ctypes.__file__).read_bytes())
    struct.pack_into("<H", blob, 18, 62 if platform.machine() in ("aarch64", "arm64") else 183)
    path.write_bytes(bytes(blob))
    return path


def _text_file(path: Path) -> Path:
    path.write_text("not a library")
    return path


PLUGIN_CASES = {
    "missing": (lambda tmp: tmp / "nowhere" / "libmhunet_plugins.so", "which does not exist"),
    "other CPU": (lambda tmp: _foreign_arch_library(tmp / "libmhunet_plugins.so"), "is built for"),
    "not a plugin": (lambda tmp: Path(_ctypes.__file__), "is not the mhunet plugin library"),
    "not a library": (lambda tmp: _text_file(tmp / "libmhunet_plugins.so"), "is not a shared library"),
}


@pytest.mark.parametrize("case", PLUGIN_CASES)
def test_bad_plugin_library_is_refused_before_tensorrt(tmp_path: Path, tiny: Path, case: str) -> None:
    make, words = PLUGIN_CASES[case]
    lib = make(tmp_path)
    vol = _volume(tmp_path / "v.nii.gz")
    env = {**os.environ, "MHUNET_PLUGIN_LIB": str(lib)}
    cmd = [sys.executable, "-m", "mhunet_deploy.cli", "infer", str(vol), "-o", str(tmp_path / "out")]
    res = subprocess.run(
        [*cmd, "--backend", "tensorrt", "--checkpoint", str(tiny)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    _assert_one_error_line(res, 4, words)
    assert not (tmp_path / "out").exists()  # created for the run, removed again: nothing was written


def test_plugin_library_not_found_anywhere(tmp_path: Path, tiny: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MHUNET_PLUGIN_LIB"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    vol = _volume(tmp_path / "v.nii.gz")
    cmd = [sys.executable, "-m", "mhunet_deploy.cli", "infer", str(vol), "--backend", "tensorrt"]
    res = subprocess.run(  # cwd has no build/ nor plugins/build/
        [*cmd, "--checkpoint", str(tiny)], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    _assert_one_error_line(res, 4, "TensorRT plugin library not found")
    assert not (tmp_path / "mhunet-output").exists()  # the default -o, created and removed again


def test_plugin_check_reads_the_exported_symbol(tmp_path: Path) -> None:
    """The check accepts a library that exports getCreators (a stub compiled here), nothing less."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler to build a stub shared library")
    src = tmp_path / "stub.cpp"
    src.write_text('extern "C" void* getCreators(int& n) { n = 0; return nullptr; }\n')
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(tmp_path / "stub.so"), str(src)], check=True)
    assert plugin_library_problem(tmp_path / "stub.so") is None
    assert "getCreators" in plugin_library_problem(Path(_ctypes.__file__))


def _foreign_engine(engine_dir: Path, checkpoint: Path, export: Path, **key: object) -> Path:
    """An engine file of the tiny graph whose sidecar says it was built elsewhere."""
    graph, manifest = find_graph(checkpoint, "portable", "fp16", export)
    engine = engine_path(engine_dir, graph, FLAVORS["tensorrt-rtx"])
    engine.parent.mkdir(parents=True, exist_ok=True)
    engine.write_bytes(b"engine bytes of another machine")
    stored = {"library": "tensorrt-rtx", "onnx_sha256": manifest["onnx_sha256"], "precision": "fp16", **key}
    engine.with_suffix(".json").write_text(json.dumps({"key": stored}))
    return engine


def _infer_rtx(tmp_path: Path, checkpoint: Path, export: Path, engines: Path) -> subprocess.CompletedProcess:
    vol = _volume(tmp_path / "v.nii.gz")
    return mhunet(
        "infer",
        str(vol),
        "-o",
        str(tmp_path / "out"),
        "--backend",
        "tensorrt-rtx",
        "--precision",
        "fp16",
        "--checkpoint",
        str(checkpoint),
        "--export-dir",
        str(export),
        "--engine-dir",
        str(engines),
    )


def test_engine_of_another_library_version_is_refused(tiny_export: TinyExport, tmp_path: Path) -> None:
    try:
        import tensorrt_rtx
    except ImportError:
        pytest.skip("tensorrt_rtx not importable: the version half of the foreign check needs it")
    ckpt, export = tiny_export()
    engine = _foreign_engine(
        tmp_path / "engines", ckpt, export, library_version="0.9", target={"compute_capabilities": ["SM86"]}
    )
    before = engine.read_bytes()
    res = _infer_rtx(tmp_path, ckpt, export, tmp_path / "engines")
    _assert_one_error_line(
        res, 4, f"library_version: built for 0.9, this machine has {tensorrt_rtx.__version__}"
    )
    assert "move it away or pass another --engine-dir" in res.stderr
    assert engine.read_bytes() == before  # never overwritten: it may be a colleague's


def test_engine_of_another_gpu_is_refused(tiny_export: TinyExport, tmp_path: Path) -> None:
    from mhunet_deploy.engine.cache import current_gpu
    from mhunet_deploy.errors import BackendError

    try:
        here = current_gpu()
    except BackendError as e:
        pytest.skip(f"this machine's GPU is unknown ({e}); the GPU half of the foreign check needs one")
    ckpt, export = tiny_export()
    other = {"gpu": "NVIDIA Jetson AGX Orin", "compute_capability": "8.7"}
    assert other != here
    _foreign_engine(tmp_path / "engines", ckpt, export, library_version="any", target=other)
    res = _infer_rtx(tmp_path, ckpt, export, tmp_path / "engines")
    _assert_one_error_line(res, 4, "target: built for NVIDIA Jetson AGX Orin (compute capability 8.7)")


# --- documentation --------------------------------------------------------------------------------


def test_readme_troubleshooting_has_a_row_per_case() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Troubleshooting") :].split("\n## ")[0]
    phrases = [words for _, words in CORPUS.values()] + [
        "is a file, not a folder",
        "would overwrite the input",
        "would write the same outputs",
        "cannot write to folder",
        "no space left on the device",
        "TensorRT plugin library not found",
        "which does not exist",
        "is built for",
        "is not the mhunet plugin library",
        "is not a shared library",
        "engine was built for another machine",
        "neither qform nor sform",
        "tools that read pixdim may measure other volumes",
        'reading DICOM needs pydicom; pip install "mhunet-deploy[dicom]"',
        "pick one with --series UID",
        "is one DICOM slice; pass the folder",
        "the slice cannot be placed",
        "in orientation or size",
        "pixel spacing differs between slices",
        "slices are unevenly spaced",
        "two slices share one position",
        "is a multi-frame image",
        "is a colour image",
        "lack FrameOfReferenceUID, so a DICOM SEG cannot be placed on them",
        'writing a DICOM SEG needs highdicom; pip install "mhunet-deploy[dicom]", or pass --no-dicom-seg',
        "is not a zip archive; zip the DICOM series folder",
        "cannot be unpacked (",
        "the limit: 100x the zip's size, at most",
        "a path outside the zip; zip the series folder",
        "which is not a DICOM file; zip one DICOM series only",
        "holds no DICOM files",
        "; zip one series per upload",
        # the brain mask (tests/test_brain.py, tests/test_cli.py, tests/test_pipeline.py)
        "give a mask on the scan's voxel grid",
        "resample the mask onto the scan first",
        "is empty (no voxel > 0); give a mask that covers the brain, or pass --no-brain-mask",
        "--brain-mask and --no-brain-mask exclude each other",
        "--brain-mask is one scan's mask, but 2 inputs were given",
        "the model found no brain",
    ]
    missing = [p for p in phrases if p not in table]
    assert not missing, f"README troubleshooting lacks: {missing}"
