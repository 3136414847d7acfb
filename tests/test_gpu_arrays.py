"""GPU (cupy) pre/post-processing against the CPU path: same geometry, slices and probabilities within
float tolerance, same mask up to voxels at the threshold, identical labels and lesion table from the same
probabilities. Needs cupy and a GPU; `scripts/gpu/bench_runtime.sh` runs the same check on real scans."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mhunet_deploy.arrays import _gpu_arrays_problem
from mhunet_deploy.io.nifti import volume_from_image

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_gpu_arrays_problem() is not None, reason=f"GPU arrays: {_gpu_arrays_problem()}"),
]

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu" / "bench_runtime.py"


def _bench_runtime():
    spec = importlib.util.spec_from_file_location("bench_runtime", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_pre_and_post_processing_match_the_cpu_path() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(100, 10, (60, 70, 24)).astype(np.float32)
    data[20:35, 25:40, 8:14] += 80  # one bright region, plus noise blobs
    base = volume_from_image(nib.Nifti1Image(data, np.diag([0.9, 0.9, 3.0, 1.0])))
    bench = _bench_runtime()
    for name, volume in (("axial", base), ("oblique", bench.oblique_variant(base))):
        result = bench.parity_case(name, volume, 0.5, 3.0)
        assert result["lesions_cpu"] > 0, result
        assert result["passed"], result
