"""Probability map -> numbered lesions and the per-lesion table of the report.

Lesions are 26-connected components (voxels touching by a face, edge or corner belong together);
sizes are judged in mm3 so the rule means the same at every voxel size. Labels run 1..K from the
largest lesion down, so label 1 is always the largest.

Both functions compute where their input lives (numpy/scipy on the CPU, cupy/cupyx on the GPU, see
``mhunet_deploy.arrays``); only per-lesion numbers (sizes, sums, extents) come to the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from nibabel.affines import apply_affine

from .arrays import array_modules, modules_of, to_host

DEFAULT_THRESHOLD = 0.5
# Smallest lesion kept, in mm3: removes isolated voxels of noise (one voxel at 1 mm isotropic, two
# at 0.7 x 0.7 x 4 mm) while keeping the smallest lesions raters mark.
DEFAULT_MIN_LESION_MM3 = 3.0
#: Scans with a voxel side above this are thick-slice scans, with a minimum lesion size of their own.
THICK_SLICE_MM = 3.0
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def _voxel_mm3(zooms: Sequence[float]) -> float:
    zooms = np.asarray(zooms[:3], dtype=np.float64)
    if zooms.shape != (3,) or not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise ValueError(f"zooms must be three positive voxel sizes in mm, got {zooms.tolist()}")
    return float(np.prod(zooms))


def min_lesion_for(
    zooms: Sequence[float], min_lesion_mm3: float, min_lesion_mm3_thick: float | None
) -> float:
    """The minimum lesion size for one scan: a thick-slice scan takes ``min_lesion_mm3_thick`` when one is
    set (a 7 mm slice makes every detection at least 7 mm deep, so the same mm3 means less there)."""
    thick = min_lesion_mm3_thick is not None and max(float(z) for z in zooms[:3]) > THICK_SLICE_MM
    return float(min_lesion_mm3_thick) if thick else float(min_lesion_mm3)


def segment(
    prob: Any,
    zooms: Sequence[float],
    threshold: float = DEFAULT_THRESHOLD,
    min_lesion_mm3: float = DEFAULT_MIN_LESION_MM3,
    within: Any | None = None,
) -> Any:
    """Lesion map (int32): voxels with prob >= threshold, 26-connected lesions of at least min_lesion_mm3,
    labelled 1..K by size, largest first (ties: in scan order).

    ``within`` (boolean, prob's shape; the brain mask) cuts the thresholded voxels before lesions are
    formed, so the part of a detection outside it is gone and a remnant inside must reach the size itself."""
    if prob.ndim != 3:
        raise ValueError(f"prob must be a 3D volume, got shape {prob.shape}")
    xp, ndi = modules_of(prob)
    voxel_mm3 = _voxel_mm3(zooms)
    found = prob >= threshold
    if within is not None:
        found &= within
    # scipy and cupyx both number components in scan order of their first voxel.
    labels, n = ndi.label(found, structure=_CONNECTIVITY_26)
    # The ordering is decided on the host, on one size per component, so both paths sort alike.
    sizes = to_host(xp.bincount(labels.ravel(), minlength=n + 1))[1:]
    order = np.argsort(-sizes, kind="stable")
    kept = order[sizes[order] * voxel_mm3 >= min_lesion_mm3]
    relabel = np.zeros(n + 1, dtype=np.int32)
    relabel[kept + 1] = np.arange(1, kept.size + 1, dtype=np.int32)
    return xp.asarray(relabel)[labels]


def lesion_table(labels: Any, affine: np.ndarray, zooms: Sequence[float]) -> list[dict]:
    """One row per label 1..K: id, voxels, volume_ml, centroid_mm (world), bbox (voxel min/max, inclusive).

    Measured over the labelled voxels only, all lesions at once (counts and coordinate sums by
    ``bincount``, extents by ``ndimage.minimum/maximum``), so the cost follows the lesion load, not the
    volume's size or the lesion count (a whole-volume ``center_of_mass`` did not: BENCHMARKS.md section 5).
    On a GPU only those voxels' indices and labels come to the host and the table is made there: a few
    thousand numbers, where six labelled reductions on the device cost ~30 ms (BENCHMARKS.md section 14)."""
    voxel_ml = _voxel_mm3(zooms) / 1000.0
    xp, _ = modules_of(labels)
    _, ndimage = array_modules("cpu")
    where_dev = xp.flatnonzero(labels)
    where, lab = to_host(where_dev), to_host(labels.ravel()[where_dev])
    if where.size == 0:
        return []
    coords = np.unravel_index(where, labels.shape)
    n = int(lab.max())
    ids = np.arange(1, n + 1)
    counts = np.bincount(lab, minlength=n + 1)[1:]
    # Integer coordinates: their float64 sums are exact, whatever the order of summation.
    sums = np.stack(
        [np.bincount(lab, weights=c.astype(np.float64), minlength=n + 1)[1:] for c in coords], axis=1
    )
    lows = np.stack([ndimage.minimum(c, lab, ids) for c in coords], axis=1).astype(int)
    highs = np.stack([ndimage.maximum(c, lab, ids) for c in coords], axis=1).astype(int)
    present = np.flatnonzero(counts)  # label numbers with no voxels (labels not from `segment`) drop out
    centroids = apply_affine(affine, sums[present] / counts[present, None])
    return [
        {
            "id": int(i + 1),
            "voxels": int(counts[i]),
            "volume_ml": float(counts[i] * voxel_ml),
            "centroid_mm": [float(c) for c in centre],
            "bbox": {"min": lows[i].tolist(), "max": highs[i].tolist()},
        }
        for i, centre in zip(present, centroids, strict=True)
    ]
