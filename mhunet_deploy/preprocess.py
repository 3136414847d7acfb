"""From a scan in any orientation and spacing to model slices, and exactly back.

Forward: reorient to RAS voxel order (a permutation/flip, no interpolation), resample each axial
slice in plane to `spacing_mm` (linear), centre pad/crop to `grid` x `grid`, normalise intensities.
Model slices are indexed ``[s, 0, r, a]``: s runs inferior->superior, r right-wards (R), a anterior-wards (A).

Back: ``Geometry.to_input_grid`` undoes pad/crop (outside -> 0), resamples to each slice's own voxel
centres and undoes the reorientation, so the probability lands on the input's exact voxel grid.
Both directions use one continuous map (voxel centres, FOV centres aligned), which
``Geometry.model_affine`` states in world coordinates.

The voxel work runs where the data is: numpy/scipy arrays on the CPU, cupy arrays on the GPU
(``mhunet_deploy.arrays``); ``prepare(..., device=)`` is where the volume moves. The geometry itself is
planned on the host from the header and the host copy of the voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from nibabel import orientations

from mhunet_deploy.arrays import array_modules, modules_of
from mhunet_deploy.io.nifti import Volume

DEFAULT_GRID = 256
DEFAULT_SPACING_MM = 1.0
# Foreground = voxels above p2 + 0.1 * (p98 - p2) of the whole volume: FSL BET's robust threshold.
# It drops air and its noise on raw scans (skull on) and the zero background of skull-stripped ones.
FOREGROUND_PERCENTILES = (2.0, 98.0)
FOREGROUND_FRACTION = 0.1
# Intensities are clipped to these percentiles of the foreground, then z-scored over the foreground.
CLIP_PERCENTILES = (0.5, 99.5)

_RAS = orientations.axcodes2ornt("RAS")


@dataclass(frozen=True)
class IntensityStats:
    """Foreground threshold and normalisation constants of one scan (reported; reused by training)."""

    foreground_threshold: float
    lower: float
    upper: float
    mean: float
    std: float

    @classmethod
    def from_volume(cls, data: Any) -> IntensityStats:
        """Statistics over the scan's own voxels, so padding and resampling do not bias them."""
        xp, _ = modules_of(data)
        p_lo, p_hi = (float(p) for p in xp.percentile(data, FOREGROUND_PERCENTILES))
        threshold = p_lo + FOREGROUND_FRACTION * (p_hi - p_lo)
        foreground = data[data > threshold]
        if foreground.size == 0:  # >= 98% of voxels share the maximum: take all but the minimum
            threshold = float(data.min())
            foreground = data[data > threshold]
        lower, upper = (float(p) for p in xp.percentile(foreground, CLIP_PERCENTILES))
        clipped = xp.clip(foreground.astype(np.float64), lower, upper)  # float64 statistics
        std = float(clipped.std())
        # A two-valued image has a constant foreground: centre it and leave the scale alone.
        return cls(threshold, lower, upper, float(clipped.mean()), std if std > 0 else 1.0)

    def apply(self, x: Any) -> Any:
        """Clip then z-score; background and padding (raw 0) both map to about the clip floor."""
        xp, _ = modules_of(x)
        return ((xp.clip(x, self.lower, self.upper) - self.mean) / self.std).astype(np.float32)


def _overlap(offset: int, src_len: int, dst_len: int) -> tuple[slice, slice]:
    """Source and destination ranges when source index j lands at destination index j + offset."""
    src_start, dst_start = max(-offset, 0), max(offset, 0)
    n = max(min(src_len - src_start, dst_len - dst_start), 0)
    return slice(src_start, src_start + n), slice(dst_start, dst_start + n)


def _shift_in_plane(src: Any, offset: tuple[int, int], shape: tuple[int, int]) -> Any:
    """Pad/crop the last two axes by integer offsets; what falls outside `src` is 0."""
    xp, _ = modules_of(src)
    out = xp.zeros(src.shape[:-2] + shape, dtype=np.float32)
    (sx, dx), (sy, dy) = (_overlap(o, s, d) for o, s, d in zip(offset, src.shape[-2:], shape, strict=True))
    out[..., dx, dy] = src[..., sx, sy]
    return out


def _reorient(data: Any, ornt: np.ndarray) -> Any:
    """``nibabel.orientations.apply_orientation`` for numpy and cupy arrays alike (flips, then a
    transpose; nibabel's own converts to numpy)."""
    xp, _ = modules_of(data)
    for axis, flip in enumerate(ornt[:, 1]):
        if flip == -1:
            data = xp.flip(data, axis=axis)
    return data.transpose(tuple(int(a) for a in np.argsort(ornt[:, 0])))


def _resample_slices(
    planes: Any, zoom: np.ndarray, shift: np.ndarray, shape: tuple[int, int], order: int = 1
) -> Any:
    """In-plane resampling of (S, X, Y) (spline `order` 0 or 1), source coordinate = zoom * target + shift.

    No interpolation across slices by design. scipy: one 2D call per slice, twice as fast as one 3D
    call. cupy: one 3D call with a unit step along S, which lands on whole slices (weight 0 on the
    neighbour, so the same values) in one launch instead of one per slice.
    """
    xp, ndi = modules_of(planes)
    out = xp.empty((planes.shape[0],) + shape, dtype=np.float32)
    if xp is np:
        for plane, target in zip(planes, out, strict=True):
            ndi.affine_transform(plane, zoom, offset=shift, output=target, order=order, mode="nearest")
    else:
        zoom3, shift3 = xp.asarray(np.r_[1.0, zoom]), tuple(np.r_[0.0, shift])
        # cupyx sizes its kernel from output_shape (default: the input's), not from `output`.
        ndi.affine_transform(
            planes, zoom3, offset=shift3, output_shape=out.shape, output=out, order=order, mode="nearest"
        )
    return out


@dataclass(frozen=True)
class Geometry:
    """Everything that maps input voxels to model pixels and back.

    In-plane, along each RAS axis k, model pixel g and RAS voxel coordinate u are related by
    ``u = ras_centre[k] + (g - offset[k] - resampled_centre[k]) * step[k]`` (step = input voxels per
    model pixel); slices map one to one onto the RAS voxel planes along S.
    """

    input_shape: tuple[int, int, int]
    input_affine: np.ndarray
    ornt: np.ndarray
    ras_shape: tuple[int, int, int]
    ras_affine: np.ndarray
    step: tuple[float, float]
    resampled_shape: tuple[int, int]
    offset: tuple[int, int]
    grid: int
    spacing_mm: float

    @classmethod
    def plan(cls, volume: Volume, grid: int, spacing_mm: float, threshold: float) -> Geometry:
        """Choose the reorientation, resampling and pad/crop for `volume` (foreground > threshold)."""
        if grid < 1 or not spacing_mm > 0:
            raise ValueError(f"grid ({grid}) and spacing_mm ({spacing_mm}) must be positive")
        affine = volume.image.affine
        shape = volume.data.shape
        ornt = orientations.io_orientation(affine)
        ras_affine = affine @ orientations.inv_ornt_aff(ornt, shape)
        ras_shape = tuple(int(n) for n in orientations.apply_orientation(np.empty(shape, bool), ornt).shape)
        voxel_mm = np.linalg.norm(ras_affine[:3, :3], axis=0)
        step = tuple(float(spacing_mm / voxel_mm[k]) for k in range(2))
        resampled = tuple(max(1, round(ras_shape[k] / step[k])) for k in range(2))

        needs_crop = any(resampled[k] > grid for k in range(2))
        # In-plane footprint of the foreground over all slices, only needed to place a crop.
        footprint = (
            orientations.apply_orientation(volume.data > threshold, ornt).any(axis=2) if needs_crop else None
        )
        offset = []
        for k in range(2):
            if resampled[k] <= grid:
                offset.append((grid - resampled[k]) // 2)
                continue
            # FOV wider than the grid: centre the crop on the foreground bounding box.
            idx = np.flatnonzero(footprint.any(axis=1 - k))
            centre_u = (idx[0] + idx[-1]) / 2 if idx.size else (ras_shape[k] - 1) / 2
            centre_j = (resampled[k] - 1) / 2 + (centre_u - (ras_shape[k] - 1) / 2) / step[k]
            offset.append(int(np.clip(round((grid - 1) / 2 - centre_j), grid - resampled[k], 0)))
        return cls(
            input_shape=tuple(int(n) for n in shape),
            input_affine=np.array(affine, dtype=np.float64),
            ornt=ornt,
            ras_shape=ras_shape,
            ras_affine=ras_affine,
            step=step,
            resampled_shape=resampled,
            offset=tuple(offset),
            grid=grid,
            spacing_mm=float(spacing_mm),
        )

    def _centres(self) -> tuple[np.ndarray, np.ndarray]:
        ras_centre = (np.asarray(self.ras_shape[:2]) - 1) / 2
        resampled_centre = (np.asarray(self.resampled_shape) - 1) / 2
        return ras_centre, resampled_centre

    @property
    def model_affine(self) -> np.ndarray:
        """Voxel-to-world affine of the slices as a volume: ``slices[:, 0].transpose(1, 2, 0)``."""
        ras_centre, resampled_centre = self._centres()
        step = np.asarray(self.step)
        to_ras = np.eye(4)
        to_ras[[0, 1], [0, 1]] = step
        to_ras[:2, 3] = ras_centre - (np.asarray(self.offset) + resampled_centre) * step
        return self.ras_affine @ to_ras

    def to_model_grid(self, data: Any, order: int = 1) -> Any:
        """Input-shaped volume -> (S, 1, grid, grid) float32 slices, geometry only (no normalisation).

        `order` is the spline order: 1 (linear) for images, 0 (nearest) for label maps.
        """
        if data.shape != self.input_shape:
            raise ValueError(f"volume shape {data.shape} differs from the planned {self.input_shape}")
        xp, _ = modules_of(data)
        ras_centre, resampled_centre = self._centres()
        step = np.asarray(self.step)
        planes = xp.ascontiguousarray(_reorient(data, self.ornt).transpose(2, 0, 1), dtype=np.float32)
        resampled = _resample_slices(
            planes, step, ras_centre - resampled_centre * step, self.resampled_shape, order
        )
        return _shift_in_plane(resampled, self.offset, (self.grid, self.grid))[:, None]

    def to_input_grid(self, slices_prob: Any) -> Any:
        """(S, 1, grid, grid) per-slice maps -> float32 volume on the input's exact voxel grid."""
        expected = (self.ras_shape[2], 1, self.grid, self.grid)
        if slices_prob.shape != expected:
            raise ValueError(f"slices shape {slices_prob.shape} differs from the model grid {expected}")
        ras_centre, resampled_centre = self._centres()
        step = np.asarray(self.step)
        resampled = _shift_in_plane(
            slices_prob[:, 0], (-self.offset[0], -self.offset[1]), self.resampled_shape
        )
        planes = _resample_slices(
            resampled, 1.0 / step, resampled_centre - ras_centre / step, self.ras_shape[:2]
        )
        xp, _ = modules_of(planes)
        back = _reorient(planes.transpose(1, 2, 0), orientations.ornt_transform(_RAS, self.ornt))
        return xp.ascontiguousarray(back, dtype=np.float32)


def prepare(
    volume: Volume, grid: int = DEFAULT_GRID, spacing_mm: float = DEFAULT_SPACING_MM, device: str = "cpu"
) -> tuple[Any, Geometry]:
    """Model-ready slices (S, 1, grid, grid) float32 and the Geometry that maps results back.

    ``device`` ("cpu" or "cuda") is where the voxel work runs and where the slices are returned.
    """
    xp, _ = array_modules(device)
    data = xp.asarray(volume.data)
    stats = IntensityStats.from_volume(data)
    geometry = Geometry.plan(volume, grid, spacing_mm, stats.foreground_threshold)
    return stats.apply(geometry.to_model_grid(data)), geometry
