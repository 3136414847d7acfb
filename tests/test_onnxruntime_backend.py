"""The onnxruntime backend: finds the right export, refuses stale ones, runs without torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mhunet_deploy import backends
from mhunet_deploy.backends import choose_auto, load_backend
from mhunet_deploy.backends.onnxruntime_backend import OnnxRuntimeBackend
from mhunet_deploy.errors import BackendError
from tests.tiny_model import ONE, TWO, TinyExport, save_tiny


def test_missing_export_says_run_export(tiny_export: TinyExport, tmp_path: Path) -> None:
    ckpt, _ = tiny_export()
    with pytest.raises(BackendError, match="run `mhunet export"):
        OnnxRuntimeBackend(ckpt, export_dir=tmp_path)


def test_export_of_other_weights_is_refused(tiny_export: TinyExport, tmp_path: Path) -> None:
    _, export = tiny_export()
    other = save_tiny(tmp_path / "other.safetensors", seed=1)
    with pytest.raises(BackendError, match="other weights"):
        OnnxRuntimeBackend(other, export_dir=export)


def test_edited_graph_is_refused(tiny_export: TinyExport, tmp_path: Path) -> None:
    ckpt, export = tiny_export()
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    with open(copy / "light_portable_fp32.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BackendError, match="changed since export"):
        OnnxRuntimeBackend(ckpt, export_dir=copy)


def test_plugin_graph_path_is_refused(tiny_export: TinyExport) -> None:
    ckpt, export = tiny_export()
    with pytest.raises(BackendError, match="needs portable"):
        OnnxRuntimeBackend(ckpt, onnx_path=export / "light_plugin_fp32.onnx")


@pytest.mark.parametrize("outputs", [ONE, TWO])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_predict_shape_dtype_and_name(
    tiny_export: TinyExport, precision: str, outputs: tuple[str, ...]
) -> None:
    ckpt, export = tiny_export(outputs)
    backend = load_backend("onnxruntime", ckpt, "cpu", precision, export_dir=export)
    y = backend.predict(np.zeros((1, 1, 256, 256), np.float32))
    assert y.shape == (1, len(outputs), 256, 256) and y.dtype == np.float32
    assert backend.name == "onnxruntime-cpu" and backend.precision == precision
    assert backend.outputs == outputs


def test_two_output_model_every_channel_matches_torch(tiny_export: TinyExport) -> None:
    """Both channels (lesion, brain) come through the portable graph as PyTorch computes them."""
    ckpt, export = tiny_export(TWO)
    x = np.random.default_rng(0).standard_normal((2, 1, 256, 256)).astype(np.float32)
    torch_backend = load_backend("torch", ckpt, "cpu", "fp32")
    ort_backend = load_backend("onnxruntime", ckpt, "cpu", "fp32", export_dir=export)
    assert torch_backend.outputs == ort_backend.outputs == TWO
    ref, got = torch_backend.predict(x), ort_backend.predict(x)
    assert ref.shape == got.shape == (2, 2, 256, 256)
    assert not np.allclose(ref[:, 0], ref[:, 1])  # two distinct channels, not one copied
    np.testing.assert_allclose(got, ref, atol=1e-4)


@pytest.mark.parametrize("name", ["onnxruntime", "torch"])
def test_backend_closes_at_the_end_of_with(tiny_export: TinyExport, name: str) -> None:
    """``with`` closes the backend: it drops its session or model (so it predicts no more), and a second
    ``close()`` does nothing."""
    ckpt, export = tiny_export()
    x = np.zeros((1, 1, 256, 256), np.float32)
    with load_backend(name, ckpt, "cpu", "fp32", export_dir=export) as backend:
        assert backend.predict(x).shape == (1, 1, 256, 256)
    with pytest.raises((AttributeError, TypeError)):
        backend.predict(x)
    backend.close()


def test_auto_on_the_cpu(tiny_export: TinyExport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU, torch with the fused SS2D kernel (numba) beats the exported portable graph; without
    numba the exported graph beats torch's eager scan; with neither graph nor numba, torch."""
    ckpt, export = tiny_export()
    assert choose_auto(ckpt, "cpu", "fp32", export)[0] == "torch"
    assert choose_auto(ckpt, "cpu", "fp16", export)[0] == "onnxruntime"  # torch on the CPU is fp32 only
    real = backends.has_module
    monkeypatch.setattr(backends, "has_module", lambda name: name != "numba" and real(name))
    assert choose_auto(ckpt, "cpu", "fp32", export)[0] == "onnxruntime"
    assert choose_auto(ckpt, "cpu", "fp32", tmp_path)[0] == "torch"


@pytest.mark.parametrize("outputs", [ONE, TWO], ids=["lesion", "lesion+brain"])
def test_infer_runs_without_torch(tiny_export: TinyExport, tmp_path: Path, outputs: tuple[str, ...]) -> None:
    """`mhunet infer --backend onnxruntime` where `import torch` fails (a shim package raises ImportError);
    with a brain output, the brain stage runs there too."""
    ckpt, export = tiny_export(outputs)
    shim = tmp_path / "shim" / "torch"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('torch is hidden for this test')\n")
    data = np.zeros((24, 24, 2), np.float32)
    data[6:18, 6:18] = np.random.default_rng(0).uniform(50, 100, (12, 12, 2))
    nib.save(nib.Nifti1Image(data, np.diag([4.0, 4.0, 4.0, 1.0])), tmp_path / "scan.nii.gz")
    code = (
        "import sys; from mhunet_deploy.cli import main; main(); "
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None"
    )
    args = ["infer", str(tmp_path / "scan.nii.gz"), "-o", str(tmp_path / "out"), "--backend", "onnxruntime"]
    args += ["--checkpoint", str(ckpt), "--export-dir", str(export), "--json"]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'shim'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-c", code, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["results"][0]
    assert report["backend"] == "onnxruntime-cpu"
    assert (tmp_path / "out" / "scan_mask.nii.gz").is_file()
    assert (tmp_path / "out" / "scan_brain.nii.gz").is_file() == (outputs == TWO)
    assert report["brain"]["source"] == ("model" if outputs == TWO else None)
