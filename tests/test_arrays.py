"""arrays: one code path for numpy/scipy (CPU) and cupy/cupyx (GPU); the CPU path never imports cupy.

The GPU-vs-CPU parity of pre- and post-processing runs where cupy and a GPU are
(`tests/test_gpu_arrays.py`, `scripts/gpu/bench_runtime.sh`)."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from mhunet_deploy import arrays


def test_cpu_modules_and_host_arrays() -> None:
    assert arrays.array_modules("cpu") == (np, ndimage)
    a = np.arange(3)
    assert arrays.modules_of(a) == (np, ndimage)
    assert not arrays.is_device_array(a) and arrays.to_host(a) is a
    with pytest.raises(ValueError, match="array device"):
        arrays.array_modules("tpu")


def test_cpu_backends_keep_cpu_arrays() -> None:
    assert arrays.array_device("cpu") == "cpu"


@pytest.mark.skipif(arrays._gpu_arrays_problem() is None, reason="cupy works here: no CPU fallback to see")
def test_gpu_backend_without_cupy_falls_back_with_one_note(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="mhunet_deploy.arrays"):
        assert arrays.array_device("cuda") == "cpu"
    (record,) = caplog.records
    assert "pre- and post-processing run on the CPU" in record.getMessage()
    assert "\n" not in record.getMessage()


def test_cpu_pipeline_does_not_import_cupy(tmp_path) -> None:
    """A whole infer on the CPU (preprocess, sigmoid, segment, table, write) leaves cupy unimported."""
    code = f"""
import sys
import numpy as np
from pathlib import Path
from mhunet_deploy.pipeline import InferOptions, infer_volume
from tests.cli_helpers import small_volume

class Constant:
    name, precision, batch_size, engine_key, array_device = "c", "fp32", 8, None, "cpu"
    outputs = ("lesion",)
    def predict(self, x):
        return np.where(x > 1, 5.0, -5.0).astype(np.float32)

root = Path({str(tmp_path)!r})
options = InferOptions(model_info={{"name": "t", "sha256": "0"}})
report = infer_volume(small_volume(root / "v.nii.gz"), root / "out", Constant(), options)
assert report["lesion_count"] >= 1, report
assert "cupy" not in sys.modules and "cupyx" not in sys.modules, sorted(m for m in sys.modules if "cupy" in m)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
