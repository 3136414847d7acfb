"""brain: the model's brain probability -> one filled mask; a user's mask refused unless on the scan's grid;
lesion voxels outside the brain cut before lesions are formed."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mhunet_deploy.brain import BRAIN_THRESHOLD, brain_from_probability, load_brain_mask, slice_axis
from mhunet_deploy.errors import InputError
from mhunet_deploy.io.nifti import load_volume
from mhunet_deploy.postprocess import segment

SHAPE = (30, 32, 20)


def ball(shape: tuple[int, ...] = SHAPE, radius: float = 0.8) -> np.ndarray:
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    return x**2 + y**2 + z**2 <= radius**2


def test_largest_component_only_and_edge_contact_is_not_connection() -> None:
    brain = ball()
    prob = np.where(brain, 0.9, 0.1).astype(np.float32)
    prob[0:2, 0:2, 0:2] = 0.9  # a blob of "scalp", apart from the brain
    mid = SHAPE[2] // 2
    x, y = max(np.argwhere(brain[:, :, mid]), key=lambda v: v[0] + v[1])
    edge = (x + 1, y + 1, mid)  # touches the brain along an edge only (no face neighbour inside)
    faces = [
        (x + 1 + dx, y + 1 + dy, mid + dz) for dx, dy, dz in np.vstack([np.eye(3), -np.eye(3)]).astype(int)
    ]
    assert not brain[edge] and not any(brain[f] for f in faces)
    prob[edge] = 0.9
    mask = brain_from_probability(prob, np.eye(4))
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, brain)


def test_threshold_is_one_half_inclusive() -> None:
    prob = np.zeros(SHAPE, np.float32)
    prob[10:15, 10:15, 5:10] = BRAIN_THRESHOLD
    assert BRAIN_THRESHOLD == 0.5 and brain_from_probability(prob, np.eye(4)).sum() == 125


def test_holes_filled_per_axial_slice_and_enclosed_cavities() -> None:
    brain = ball()
    prob = np.where(brain, 0.9, 0.0).astype(np.float32)
    prob[13:17, 14:18, 8:12] = 0.0  # a cavity enclosed in 3D (a ventricle the model calls "not brain")
    prob[14:16, 15:17, 10:] = 0.0  # a channel from the cavity up through the top: open in 3D
    mask = brain_from_probability(prob, np.eye(4))
    # Per-slice filling closes both, wherever a slice of the ball surrounds the channel (z < 16).
    np.testing.assert_array_equal(mask[..., :16], brain[..., :16])


def test_slices_follow_the_most_axial_voxel_axis() -> None:
    """A tube open at both ends along voxel axis 0: filled when axis 0 is superior (LPS-like sagittal
    storage puts S first), not when axis 2 is."""
    tube = np.zeros(SHAPE, bool)
    tube[:, 8:24, 4:16] = True
    tube[:, 12:20, 8:12] = False  # the bore, open at both ends of axis 0
    prob = tube.astype(np.float32)
    s_first = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
    assert slice_axis(s_first) == 0 and slice_axis(np.eye(4)) == 2
    assert brain_from_probability(prob, s_first)[:, 12:20, 8:12].all()
    assert not brain_from_probability(prob, np.eye(4))[:, 12:20, 8:12].any()


def test_no_voxel_above_threshold_is_an_empty_mask() -> None:
    mask = brain_from_probability(np.full(SHAPE, 0.2, np.float32), np.eye(4))
    assert mask.shape == SHAPE and not mask.any()


def test_lesion_cut_by_the_brain_before_size_and_labels() -> None:
    """A detection half outside keeps only its inside part, which must reach the minimum size itself."""
    prob = np.zeros(SHAPE, np.float32)
    within = np.zeros(SHAPE, bool)
    within[:, :16] = True
    prob[5:8, 14:18, 5:8] = 0.9  # 3 x 4 x 3, two of its four y columns inside: 18 voxels remain
    prob[20:22, 15:17, 5] = 0.9  # 2 x 2, one column inside: 2 voxels remain, below 3 mm3
    prob[10, 25:28, 10] = 0.9  # wholly outside
    labels = segment(prob, (1.0, 1.0, 1.0), 0.5, 3.0, within=within)
    assert labels.max() == 1 and (labels == 1).sum() == 18
    assert not (labels > 0)[~within].any()
    assert segment(prob, (1.0, 1.0, 1.0), 0.5, 3.0).max() == 3  # without the brain: all three


def _scan(tmp_path: Path, affine: np.ndarray | None = None) -> Path:
    data = np.random.default_rng(0).uniform(10, 100, SHAPE).astype(np.float32)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine), path)
    return path


def _mask(tmp_path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path = tmp_path / "brain.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine), path)
    return path


def test_user_mask_is_voxels_above_zero(tmp_path: Path) -> None:
    scan = load_volume(_scan(tmp_path))
    values = np.where(ball(), 3, 0).astype(np.int16)  # labels other than 1 are brain too
    values[0, 0, 0] = -1
    mask = load_brain_mask(_mask(tmp_path, values), scan)
    np.testing.assert_array_equal(mask, ball())
    whole = load_brain_mask(_mask(tmp_path, np.ones(SHAPE, np.uint8)), scan)  # constant, but a mask
    assert whole.all()


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda t: _mask(t, np.ones((30, 32, 19), np.uint8)), "has shape (30, 32, 19), the scan"),
        (lambda t: _mask(t, np.ones(SHAPE, np.uint8), np.diag([1.0, 1.0, 2.5, 1.0])), "not on the voxel"),
        (lambda t: _mask(t, np.zeros(SHAPE, np.uint8)), "is empty (no voxel > 0)"),
        (lambda t: (t / "notes.nii.gz").write_text("hello") and t / "notes.nii.gz", "is not a NIfTI"),
        (lambda t: t / "missing.nii.gz", "does not exist"),
    ],
)
def test_user_mask_refused_in_one_line(tmp_path: Path, make, words: str) -> None:
    scan = load_volume(_scan(tmp_path))
    with pytest.raises(InputError) as info:
        load_brain_mask(make(tmp_path), scan)
    message = str(info.value)
    assert message.startswith("brain mask ") and words in message and "\n" not in message, message


def test_one_labelling_fills_the_same_holes_as_binary_fill_holes_per_plane() -> None:
    """The stack-wide fill (one label call, in-plane connectivity) is scipy's per-plane fill, exactly."""
    from scipy import ndimage

    from mhunet_deploy.brain import _holes_per_plane

    rng = np.random.default_rng(5)
    stack = ndimage.binary_opening(rng.random((9, 40, 33)) > 0.45, iterations=1)
    expected = np.stack([ndimage.binary_fill_holes(plane) for plane in stack])
    assert (expected != stack).any()  # there are holes to fill
    np.testing.assert_array_equal(stack | _holes_per_plane(stack), expected)
