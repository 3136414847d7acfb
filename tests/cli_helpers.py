"""`mhunet` as a user runs it (a real process), and a small valid scan to run it on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def mhunet(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mhunet_deploy.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def small_volume(path: Path, shape=(40, 48, 12), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    data = rng.normal(100, 10, shape).astype(np.float32)
    data[10:20, 10:20, 4:8] += 60
    img = nib.Nifti1Image(data, np.diag([0.9, 0.9, 3.0, 1.0]))
    img.set_qform(img.affine, code=1)
    nib.save(img, path)
    return path
