"""The brain mask of `mhunet infer`: from the model's brain output or a user's file.

Lesions are kept inside it (``postprocess.segment(within=...)``): on skull-on clinical scans the lesion
channel alone fires on the scalp, the orbits and the skull base (issue #12). The model's brain
probability, back on the input grid, becomes a mask by: threshold 0.5, the largest 6-connected component
(face neighbours only, so a blob of scalp touching the brain at an edge or corner stays out), then holes
filled slice by slice along the input's most axial voxel axis (ventricles and deep grey matter, which
the model may call "not brain", and any cavity open only through the skull base). Filling each slice
also fills every cavity enclosed in 3D: a 3D cavity's cross-section in a slice is enclosed in that
slice, or its path to the outside would be a 3D one, and filling adds no new 3D cavity.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from nibabel import orientations

from .arrays import modules_of, to_host
from .errors import InputError
from .io.nifti import Volume, load_volume

BRAIN_THRESHOLD = 0.5
#: 4-connectivity inside each plane of a stack, none across planes (``_holes_per_plane``).
_IN_PLANE_CROSS = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_CROSS[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]


def slice_axis(affine: np.ndarray) -> int:
    """The voxel axis closest to inferior-superior: the one the pipeline slices along."""
    return int(np.flatnonzero(orientations.io_orientation(affine)[:, 0] == 2)[0])


def brain_from_probability(prob: Any, affine: np.ndarray, threshold: float = BRAIN_THRESHOLD) -> Any:
    """Boolean brain mask from a brain probability on the input grid (see the module docstring);
    computed where ``prob`` is (numpy or cupy, ``mhunet_deploy.arrays``)."""
    xp, ndi = modules_of(prob)
    labels, n = ndi.label(prob >= threshold)
    if n == 0:
        return xp.zeros(prob.shape, dtype=bool)
    sizes = to_host(xp.bincount(labels.ravel(), minlength=n + 1))[1:]
    largest = labels == int(np.argmax(sizes)) + 1
    # Fill inside the component's bounding box: background on the box's faces touches the background
    # beyond them, so every hole of the box is a hole of the volume, at a fraction of the cost.
    box = []
    for axis in range(3):
        present = to_host(xp.flatnonzero(largest.any(axis=tuple(a for a in range(3) if a != axis))))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    crop = xp.moveaxis(largest[tuple(box)], slice_axis(affine), 0)  # a view: filled in place
    crop |= _holes_per_plane(crop)
    return largest


def _holes_per_plane(stack: Any) -> Any:
    """What ``binary_fill_holes`` fills in each plane ``stack[i]`` (4-connected background not reaching
    the plane's edge), for all planes in one labelling: components connect within a plane only."""
    xp, ndi = modules_of(stack)
    background = ~stack
    labels, n = ndi.label(background, structure=_IN_PLANE_CROSS)
    edges = xp.concatenate([labels[:, [0, -1], :].ravel(), labels[:, :, [0, -1]].ravel()])
    reaches_edge = xp.zeros(n + 1, dtype=bool)
    reaches_edge[edges] = True
    return background & ~reaches_edge[labels]


def load_brain_mask(path: Path, volume: Volume) -> np.ndarray:
    """A user's brain mask (voxels > 0) for ``volume``, refused in one line unless it is on the scan's
    voxel grid (same shape, affines equal within AFFINE_ATOL_MM) and covers at least one voxel."""
    from .metrics import AFFINE_ATOL_MM  # metrics imports scipy.ndimage: not on the GPU path

    try:
        mask = load_volume(path, allow_constant=True)
    except InputError as e:
        raise InputError(f"brain mask {e}") from e
    scan = volume.path or "the scan"
    if mask.data.shape != volume.data.shape:
        raise InputError(
            f"brain mask {path} has shape {mask.data.shape}, the scan {scan} {volume.data.shape}; "
            "give a mask on the scan's voxel grid"
        )
    worst = float(np.abs(mask.image.affine - volume.image.affine).max())
    if worst > AFFINE_ATOL_MM:
        raise InputError(
            f"brain mask {path} is not on the voxel grid of {scan} (affines differ by up to {worst:.3g} mm); "
            "resample the mask onto the scan first"
        )
    inside = mask.data > 0
    if not inside.any():
        raise InputError(
            f"brain mask {path} is empty (no voxel > 0); give a mask that covers the brain, "
            "or pass --no-brain-mask"
        )
    return inside


def brain_entry(
    mask: np.ndarray | None,
    zooms: Sequence[float],
    source: str | None,
    reason: str | None = None,
    outside_voxels: int | None = None,
) -> dict[str, Any]:
    """The report's ``brain`` entry: source ("model", "user", or None with the reason), volume in mL,
    and how many above-threshold lesion voxels lay outside the mask (dropped from the lesions)."""
    voxel_ml = float(np.prod(np.asarray(zooms, dtype=np.float64))) / 1000.0
    return {
        "source": source,
        "volume_ml": None if mask is None else int(np.count_nonzero(mask)) * voxel_ml,
        "reason": reason,
        "lesion_voxels_outside": outside_voxels,
    }
