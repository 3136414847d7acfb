"""preprocess: model slices and the way back agree in world coordinates, for any input geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mhunet_deploy.io.nifti import load_volume, volume_from_image
from mhunet_deploy.preprocess import IntensityStats, prepare

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CENTRE_MM = np.array([3.0, -4.0, 6.0])


def _blob(world_mm: np.ndarray) -> np.ndarray:
    """A smooth 'probability' defined in world coordinates (sigma 12 mm), on (..., 3) points."""
    return np.exp(-np.sum((world_mm - CENTRE_MM) ** 2, axis=-1) / (2 * 12.0**2)).astype(np.float32)


def _oblique_affine(seed: int, zooms: tuple[float, float, float], shape: tuple[int, int, int]) -> np.ndarray:
    """Rotated by up to ~20 degrees, axes permuted and flipped, centred on the world origin."""
    rng = np.random.default_rng(seed)
    angles = rng.uniform(-0.35, 0.35, 3)
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[[i, i, j, j], [i, j, i, j]] = c, -s, s, c
        rotation = rotation @ r
    rotation = rotation[:, rng.permutation(3)] * rng.choice([-1, 1], 3)
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(zooms)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def _voxel_world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World mm of every voxel centre, (*shape, 3)."""
    rzs = affine[:3, :3].astype(np.float32)
    return np.einsum("ij,j...->...i", rzs, np.indices(shape, dtype=np.float32)) + affine[:3, 3].astype(
        np.float32
    )


def _volume(seed: int, shape: tuple[int, int, int], zooms: tuple[float, float, float]):
    affine = _oblique_affine(seed, zooms, shape)
    data = 100 + 900 * _blob(_voxel_world(affine, shape))
    return volume_from_image(nib.Nifti1Image(data.astype(np.float32), affine))


def _interior(shape: tuple[int, ...]) -> np.ndarray:
    """1 inside, 0 on the outermost voxels of the in-plane/spatial axes."""
    ones = np.zeros(shape, np.float32)
    ones[tuple(slice(1, -1) if n > 2 else slice(None) for n in shape)] = 1
    return ones


CASES = [  # (seed, shape, zooms, grid): padded, anisotropic, and cropped (FOV wider than the grid)
    (0, (40, 44, 10), (0.8, 0.9, 3.5), 64),
    (1, (12, 50, 46), (4.0, 0.7, 0.75), 48),
    (2, (70, 64, 9), (0.6, 0.6, 3.0), 32),
]


@pytest.mark.parametrize(("seed", "shape", "zooms", "grid"), CASES)
def test_world_positions_agree_both_ways(seed, shape, zooms, grid) -> None:
    volume = _volume(seed, shape, zooms)
    slices, geometry = prepare(volume, grid=grid)
    assert slices.shape == (geometry.ras_shape[2], 1, grid, grid) and slices.dtype == np.float32
    model_world = _voxel_world(geometry.model_affine, (grid, grid, geometry.ras_shape[2]))
    assert nib.aff2axcodes(geometry.model_affine) == ("R", "A", "S")

    # Forward: resampled input equals the blob evaluated at the model pixels' world positions.
    forward = geometry.to_model_grid(_blob(_voxel_world(volume.image.affine, shape)))
    truth = _blob(model_world).transpose(2, 0, 1)[:, None]
    # Compare only between voxel centres: beyond them the edge value is extended, not interpolated.
    inside = geometry.to_model_grid(_interior(shape)) == 1
    assert inside.any()
    np.testing.assert_allclose(forward[inside], truth[inside], atol=0.03)

    # Back: a model-grid probability defined in world coordinates lands at the input's voxels.
    back = geometry.to_input_grid(truth)
    assert back.shape == shape and back.dtype == np.float32
    covered = geometry.to_input_grid(_interior(truth.shape)) == 1
    assert covered.mean() > 0.3
    np.testing.assert_allclose(
        back[covered], _blob(_voxel_world(volume.image.affine, shape))[covered], atol=0.03
    )
    assert np.all(back[~covered] <= 1)


def test_reorientation_is_exact_without_resampling() -> None:
    """1 mm axis-aligned but permuted/flipped input: forward then back returns every voxel bit-exact."""
    rng = np.random.default_rng(3)
    affine = np.zeros((4, 4))
    affine[[1, 2, 0], [0, 1, 2]] = [-1.0, 1.0, -1.0]
    affine[3, 3] = 1
    data = rng.uniform(1, 50, (20, 22, 7)).astype(np.float32)
    volume = volume_from_image(nib.Nifti1Image(data, affine))
    _, geometry = prepare(volume, grid=32)
    assert geometry.step == (1.0, 1.0)
    np.testing.assert_array_equal(geometry.to_input_grid(geometry.to_model_grid(data)), data)


def test_crop_is_centred_on_the_foreground() -> None:
    shape = (120, 100, 6)
    rng = np.random.default_rng(1)
    data = rng.uniform(0, 10, shape).astype(np.float32)
    data[80:110, 10:40] = rng.uniform(600, 1000, (30, 30, 6))  # off-centre head in a wide FOV
    volume = volume_from_image(nib.Nifti1Image(data, np.eye(4)))
    _, geometry = prepare(volume, grid=48)
    assert geometry.offset[0] < 0 and geometry.offset[1] < 0  # cropped on both in-plane axes
    head = (data > 400).astype(np.float32)
    np.testing.assert_array_equal(geometry.to_input_grid(geometry.to_model_grid(head)), head)


def test_labels_stay_binary_with_nearest() -> None:
    volume = _volume(4, (30, 34, 8), (0.7, 0.7, 3.0))
    label = (volume.data > 500).astype(np.float32)
    _, geometry = prepare(volume, grid=40)
    assert set(np.unique(geometry.to_model_grid(label, order=0))) <= {0.0, 1.0}


def test_normalisation_rules() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(10, 2, (40, 40, 10)).clip(0).astype(np.float32)  # air noise
    data[10:30, 10:30] = rng.normal(600, 50, (20, 20, 10))  # "brain"
    stats = IntensityStats.from_volume(data)
    assert 30 < stats.foreground_threshold < 400
    brain = stats.apply(data[10:30, 10:30])
    assert abs(brain.mean()) < 0.05 and abs(brain.std() - 1) < 0.05
    slices, _ = prepare(volume_from_image(nib.Nifti1Image(data, np.eye(4))), grid=64)
    # Air and padding share the clip floor, the smallest value the model sees.
    assert slices[0, 0, 0, 0] == slices.min() == stats.apply(np.zeros(1, np.float32))[0]


def test_real_oblique_scan_round_trip() -> None:
    path = DATA / "clinical_flair" / "case01_FLAIR.nii.gz"
    if not path.exists():
        pytest.skip(f"{path} is absent (shared data not mounted)")
    volume = load_volume(path)
    slices, geometry = prepare(volume)
    assert slices.shape == (36, 1, 256, 256)
    world = _voxel_world(volume.image.affine, volume.data.shape)
    centre = world.reshape(-1, 3).mean(axis=0)
    smooth = np.exp(-np.sum((world - centre) ** 2, axis=-1) / (2 * 30.0**2)).astype(np.float32)
    back = geometry.to_input_grid(geometry.to_model_grid(smooth))
    assert np.abs(back - smooth).max() < 0.01
