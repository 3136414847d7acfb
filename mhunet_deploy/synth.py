"""Synthetic FLAIR volumes with exactly known lesion masks, for training without labelled scans.

The default model sees only these volumes in training and must then work on real FLAIR, so the
generator aims at the look of real scans rather than at a clean phantom: FLAIR contrast painted from
the MNI152 tissue maps (dark CSF, grey matter a little brighter than white matter), real MS lesion
masks (Lesjak et al. 2017) painted hyperintense with partial-volume edges, and the acquisition
effects a scanner adds (pose, thick oblique slices, skull, bias field, Rician noise, blur, dtype).

The lesion mask returned is the lesion field that was painted, sampled and slice-averaged exactly
like the image and cut at 0.5, so mask and hyperintensity stay aligned through every augmentation.

Everything is deterministic given ``seed``. Numbers in :class:`Recipe` were calibrated against the
real patient26 FLAIR (``scripts/synth_realism.py``); no model threshold is tuned on it.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

__all__ = ["Recipe", "SynthScan", "SynthSource", "synth_volume"]

_MNI = "mni152/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
_LESIONS = "open_ms/lesion_masks_mni"
_BALL26 = ndi.generate_binary_structure(3, 3)
Range = tuple[float, float]


@dataclass(frozen=True)
class Recipe:
    """Random ranges of one synthetic scan; a ``(lo, hi)`` pair is drawn uniformly per volume.

    Intensities are relative to white matter = 1 before the final random scale.
    """

    # tissue contrast
    gm_wm: Range = (1.12, 1.3)  # GM / WM ratio
    sulci: Range = (0.2, 0.6)  # depth of the random sulcal CSF lines cut into the smooth template cortex
    csf: Range = (0.1, 0.4)  # CSF / WM (FLAIR nulls free water)
    gamma: Range = (0.8, 1.25)  # on the tissue levels, so lesion contrast stays as drawn
    wm_t1_texture: Range = (0.0, 0.25)  # brighter where the template's WM is less T1-bright
    # lesions
    lesion_contrast: Range = (1.3, 1.6)  # lesion mean / mean brain intensity, per lesion
    lesion_spread: Range = (0.03, 0.1)  # relative sd of intensity inside a lesion
    lesion_edge: Range = (0.4, 1.0)  # mm, sigma of the partial-volume blur of the lesion field
    p_subset: float = 0.5  # keep a random subset of the lesion components
    keep_fraction: Range = (0.4, 1.0)
    p_mix: float = 0.3  # add the lesions of a second subject of the pool
    p_elastic: float = 0.5
    elastic_mm: Range = (0.5, 2.5)  # displacement amplitude of the lesion deformation
    # periventricular hyperintense rim / caps
    p_rim: float = 0.5
    rim_amplitude: Range = (0.05, 0.25)
    rim_width: Range = (1.0, 3.0)  # mm
    # skull, scalp and extra-cerebral CSF
    p_skull: float = 0.5
    # pose and geometry
    max_rotation_deg: float = 15.0
    brain_scale: Range = (0.85, 1.02)  # patient brains are mostly smaller than the MNI template
    anisotropic_scale: float = 0.05
    spacing: Range = (0.8, 1.2)  # mm in plane
    p_thick: float = 0.7  # thick slices (2D acquisition)
    thickness: Range = (3.0, 5.0)  # mm
    p_keep_thick_grid: float = 0.8  # else interpolate back to the in-plane spacing
    p_axial: float = 0.7  # slice direction axial; else coronal or sagittal
    p_reorient: float = 0.6  # shuffle and flip the voxel axes (non-RAS storage)
    # scanner effects
    bias: Range = (0.0, 0.35)  # peak-to-peak of the log bias field
    texture: Range = (0.03, 0.09)  # relative sd of fine multiplicative tissue texture
    noise: Range = (0.04, 0.1)  # Rician noise sd relative to WM
    blur: Range = (0.0, 0.8)  # voxels
    scale: Range = (50.0, 2000.0)  # WM intensity in stored units
    p_int16: float = 0.3
    p_slope: float = 0.5  # of the int16 volumes, those stored with scl_slope != 1


@dataclass
class SynthSource:
    """The template tissue maps resampled once onto the lesion-mask grid, plus the lesion pool.

    Loaded once per process (:meth:`load` is cached), so forked training workers share it.
    """

    affine: np.ndarray  # world from voxel of the lesion-mask grid (FSL MNI, LAS)
    shape: tuple[int, int, int]
    gm: np.ndarray  # float32 probabilities
    wm: np.ndarray
    csf: np.ndarray
    wm_t1: np.ndarray  # template T1 deviation inside WM, for WM texture
    vent_dist: np.ndarray  # mm to the nearest ventricle voxel
    out_dist: np.ndarray  # mm outside the brain mask (0 inside)
    head_box: tuple[slice, slice, slice]  # brain plus a skull margin
    lesions: dict[str, np.ndarray]  # subject -> flat voxel indices of its consensus lesion mask
    tissue_means: np.ndarray  # mean WM, GM, CSF fraction inside the brain mask
    fields: (
        np.ndarray
    )  # two unit-sd smooth noise fields on the head box (sigma 1 and 2.5 mm), rolled per volume

    @property
    def subjects(self) -> list[str]:
        return sorted(self.lesions)

    @classmethod
    def load(
        cls,
        data_dir: Path,
        subjects: list[str] | tuple[str, ...] | None = None,
        exclude: tuple[str, ...] = ("patient26",),
    ) -> SynthSource:
        """Load from ``data_dir`` (the shared ``data`` folder); ``exclude`` keeps validation cases out."""
        return _load(Path(data_dir).resolve(), tuple(subjects) if subjects else None, tuple(exclude))

    def resample_to(self, volume: np.ndarray, img: nib.Nifti1Image, order: int = 1) -> np.ndarray:
        """``volume`` (on this grid) sampled on ``img``'s grid through world coordinates."""
        m = np.linalg.solve(self.affine, img.affine)
        return _affine(volume, m[:3, :3], m[:3, 3], img.shape[:3], order)


@functools.lru_cache(maxsize=4)
def _load(data_dir: Path, subjects: tuple[str, ...] | None, exclude: tuple[str, ...]) -> SynthSource:
    paths = sorted((data_dir / _LESIONS).glob("patient*_lesions.nii.gz"))
    if not paths:
        raise FileNotFoundError(f"no lesion masks under {data_dir / _LESIONS}")
    names = {p.name.removesuffix("_lesions.nii.gz"): p for p in paths}
    wanted = [s for s in (subjects or names) if s not in exclude]
    missing = sorted(set(wanted) - set(names))
    if missing:
        raise ValueError(f"unknown subjects {missing}; available: {sorted(names)}")
    first = nib.load(names[wanted[0]])
    affine, shape = first.affine, first.shape[:3]

    def template(name: str) -> np.ndarray:
        img = nib.load(data_dir / _MNI.format(name))
        m = np.linalg.solve(img.affine, affine)  # template voxel from lesion-grid voxel
        data = np.asarray(img.dataobj, dtype=np.float32) / np.float32(255.0)
        return _affine(data, m[:3, :3], m[:3, 3], shape)

    t1, gm, wm = template("t1"), template("gm"), template("wm")
    brain = ndi.binary_fill_holes(t1 > 0.08)
    csf = np.clip(brain - gm - wm, 0.0, 1.0).astype(np.float32)
    wm_mean = float(t1[wm > 0.9].mean())
    wm_t1 = np.where(wm > 0.5, (wm_mean - t1) / wm_mean, 0.0).astype(np.float32)
    # distances to the ventricles (periventricular rim, on their box only) and outside the brain (skull)
    vent = ndi.binary_opening((csf > 0.6) & ndi.binary_erosion(brain, iterations=8))
    vbox = _bbox(vent, 12)
    vent_dist = np.full(shape, 99.0, np.float32)
    vent_dist[vbox] = ndi.distance_transform_edt(~vent[vbox])
    out_dist = ndi.distance_transform_edt(~brain).astype(np.float32)
    lesions = {}
    for s in wanted:
        img = nib.load(names[s])
        if not np.allclose(img.affine, affine) or img.shape[:3] != shape:
            raise ValueError(f"{names[s]} is not on the grid of {names[wanted[0]]}")
        lesions[s] = np.flatnonzero(np.asarray(img.dataobj) > 0).astype(np.int32)
    b = brain.astype(bool)
    rng = np.random.default_rng(0)
    head_box = _bbox(out_dist < 22, 0)
    box_shape = tuple(s.stop - s.start for s in head_box)
    return SynthSource(
        affine=affine,
        shape=shape,
        gm=gm,
        wm=wm,
        csf=csf,
        wm_t1=wm_t1,
        vent_dist=vent_dist,
        out_dist=out_dist,
        head_box=head_box,
        lesions=lesions,
        tissue_means=np.array([wm[b].mean(), gm[b].mean(), csf[b].mean()]),
        fields=np.stack([_smooth_noise(rng, box_shape, sigma) for sigma in (1.0, 2.5)]),
    )


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``margin`` voxels, clipped to the array (centre if empty)."""
    pts = np.argwhere(mask) if mask.any() else np.array([[n // 2 for n in mask.shape]])
    lo, hi = np.maximum(pts.min(0) - margin, 0), np.minimum(pts.max(0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _affine(
    data: np.ndarray, m: np.ndarray, off: np.ndarray, shape: tuple[int, ...], order: int = 1
) -> np.ndarray:
    """``ndimage.affine_transform``; exact strided copy or separable path when ``m`` is diagonal.

    Grids that differ by flips and whole-voxel shifts (the MNI template vs the FSL MNI grid) map voxel
    centres onto voxel centres, where every interpolation order equals a copy.
    """
    diagonal = np.allclose(m, np.diag(np.diag(m)))
    if diagonal and np.allclose(np.abs(np.diag(m)), 1) and np.allclose(off, np.round(off)):
        first = np.round(off).astype(int)
        step = np.round(np.diag(m)).astype(int)
        last = first + step * (np.array(shape) - 1)
        if np.all(np.minimum(first, last) >= 0) and np.all(np.maximum(first, last) < data.shape):
            idx = tuple(np.arange(n) * st + f for n, st, f in zip(shape, step, first, strict=True))
            return data[np.ix_(*idx)]
    return ndi.affine_transform(data, np.diag(m) if diagonal else m, off, output_shape=shape, order=order)


class SynthScan(NamedTuple):
    """A synthetic FLAIR and its uint8 lesion and brain masks, all on the image's grid."""

    image: nib.Nifti1Image
    lesions: nib.Nifti1Image
    brain: nib.Nifti1Image


def synth_volume(source: SynthSource, subject: str, seed: int, **recipe: object) -> SynthScan:
    """One synthetic FLAIR with its lesion and brain masks on the same (random, possibly oblique) grid.

    The brain mask is the template brain sampled and slice-averaged like the image and cut at 0.5,
    so skull-on synthetic heads teach the brain output where the skull ends.
    """
    r = dataclasses.replace(Recipe(), **recipe)
    rng = np.random.default_rng([seed, int.from_bytes(subject.encode(), "little") % 2**32])
    u = lambda rg: float(rng.uniform(*rg))  # noqa: E731
    skull = rng.random() < r.p_skull

    lesion, box = _lesion_field(source, subject, rng, r)
    lbox = tuple(
        slice(a.start - h.start, a.stop - h.start) for a, h in zip(box, source.head_box, strict=True)
    )
    image = _paint(source, lesion, lbox, rng, r, skull)

    out_aff, m, off, shape, thick_axis, k = _pose(source, rng, r, skull)
    img = _affine(image, m, off, shape)
    brain = _affine((source.out_dist[source.head_box] == 0).astype(np.float32), m, off, shape)
    les = np.zeros(shape, np.float32)
    _sample_into(les, lesion, lbox, m, off)
    if k > 1:
        img, les, brain = (_reduce(a, thick_axis, k) for a in (img, les, brain))
        step = np.eye(4)
        step[thick_axis, thick_axis] = k
        step[thick_axis, 3] = (k - 1) / 2
        out_aff = out_aff @ step
        if rng.random() >= r.p_keep_thick_grid:
            img, les, brain = (_expand(a, thick_axis, k) for a in (img, les, brain))
            out_aff = out_aff @ np.linalg.inv(step)
    img = _scanner(img, rng, r, skull)
    masks = [(a >= 0.5).astype(np.uint8) for a in (les, brain)]
    return _to_nifti(img * u(r.scale), masks, out_aff, rng, r)


def _lesion_field(
    source: SynthSource, subject: str, rng: np.random.Generator, r: Recipe
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Soft lesion field (0..1) on a box of the source grid: augmented mask, blurred at the edge."""
    idx = source.lesions[subject]
    others = [s for s in source.lesions if s != subject]
    if others and rng.random() < r.p_mix:
        idx = np.union1d(idx, source.lesions[others[rng.integers(len(others))]])
    binary = np.zeros(source.shape, bool)
    binary.flat[idx] = True
    binary &= (source.gm + source.wm) > 0.5  # lesions are tissue, not CSF
    box = _bbox(binary, 6)
    b = binary[box]
    if rng.random() < r.p_subset:
        labels, n = ndi.label(b, _BALL26)
        keep = np.r_[False, rng.random(n) < rng.uniform(*r.keep_fraction)]
        b = keep[labels]
    field = b.astype(np.float32)
    if rng.random() < r.p_elastic:
        amp = rng.uniform(*r.elastic_mm)
        coarse = [max(2, s // 12) for s in b.shape]
        grid = np.indices(b.shape, dtype=np.float32)
        for d in range(3):
            disp = ndi.zoom(
                rng.normal(0, amp, coarse).astype(np.float32), np.divide(b.shape, coarse), order=1
            )
            grid[d] += disp[: b.shape[0], : b.shape[1], : b.shape[2]]
        field = (ndi.map_coordinates(field, grid, order=1) >= 0.5).astype(np.float32)
    return ndi.gaussian_filter(field, rng.uniform(*r.lesion_edge)), box


def _paint(
    source: SynthSource,
    lesion: np.ndarray,
    lbox: tuple[slice, ...],
    rng: np.random.Generator,
    r: Recipe,
    skull: bool,
) -> np.ndarray:
    """FLAIR-like intensities on the head box (WM = 1); lesions (on ``lbox`` of it) over partial volume."""
    hb = source.head_box
    gm, wm, csf = source.gm[hb], source.wm[hb], source.csf[hb]
    levels = np.array([1.0, rng.uniform(*r.gm_wm), rng.uniform(*r.csf)]) ** rng.uniform(*r.gamma)
    img = wm * (1.0 + rng.uniform(*r.wm_t1_texture) * source.wm_t1[hb]) + gm * levels[1] + csf * levels[2]
    fine, coarse = (_rolled(f, rng) for f in source.fields)
    cut = rng.uniform(*r.sulci) * gm * np.exp(-((coarse / 0.25) ** 2))  # zero-crossing sheets look like sulci
    img += cut * (levels[2] - img)
    img *= 1.0 + rng.uniform(*r.texture) * fine
    if rng.random() < r.p_rim:
        rim = np.exp(-source.vent_dist[hb] / rng.uniform(*r.rim_width))
        img += rng.uniform(*r.rim_amplitude) * rim * (wm + gm)
    if skull:
        img += _shell(source.out_dist[hb], levels[2], rng)
    brain_mean = float(source.tissue_means @ levels / source.tissue_means.sum())

    # per-lesion level with a smooth spread inside each lesion (normalised convolution of the labels)
    core = lesion > 0.5
    labels, n = ndi.label(core, _BALL26)
    level = np.r_[0.0, rng.uniform(*r.lesion_contrast, n)].astype(np.float32)[labels]
    level *= 1.0 + rng.uniform(*r.lesion_spread) * _smooth_noise(rng, lesion.shape, 1.0)
    level = ndi.gaussian_filter(level, 1.5) / np.maximum(
        ndi.gaussian_filter(core.astype(np.float32), 1.5), 1e-3
    )
    fallback = float(np.mean(r.lesion_contrast))
    level = np.where(level > 0, level, fallback) * brain_mean
    region = img[lbox]
    region += lesion * (level - region)
    return img


def _rolled(field: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A cheap fresh-looking copy of a precomputed noise field: random circular shift and sign."""
    return np.roll(field, [int(rng.integers(n)) for n in field.shape], axis=(0, 1, 2)) * rng.choice([-1, 1])


def _shell(out_dist: np.ndarray, csf_level: float, rng: np.random.Generator) -> np.ndarray:
    """Extra-cerebral CSF, dark bone, bright scalp fat and skin as a function of distance to brain."""
    t_csf, t_bone, t_fat, t_skin = rng.uniform(1, 3), rng.uniform(3, 7), rng.uniform(2, 6), rng.uniform(1, 3)
    fat, skin, bone = rng.uniform(0.4, 1.0), rng.uniform(0.2, 0.7), rng.uniform(0.02, 0.12)
    e = np.cumsum([0.0, t_csf, t_bone, t_fat, t_skin])
    xp = [0.0, e[1], e[1] + 1, e[2], e[2] + 1, e[3], e[3] + 1, e[4], e[4] + 1]
    fp = [csf_level, csf_level, bone, bone, fat, fat, skin, skin, 0.0]
    return np.where(out_dist > 0, np.interp(out_dist, xp, fp), 0.0).astype(np.float32)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random rotation: axis uniform on the sphere, angle uniform up to ``max_deg``."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    a = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _pose(
    source: SynthSource, rng: np.random.Generator, r: Recipe, skull: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...], int, int]:
    """Output grid: affine, sampling matrix and offset into the head box, shape, thick axis, k.

    Columns of the scanner frame are in-plane, in-plane, slice; rotated, scaled (the brain's size, not
    the voxel size, changes), then stored in a random axis order with random flips.
    """
    axial = rng.random() < r.p_axial
    frame = np.eye(3)[:, [0, 1, 2] if axial else ([0, 2, 1] if rng.random() < 0.5 else [1, 2, 0])]
    thick = rng.random() < r.p_thick
    k = int(round(rng.uniform(*r.thickness))) if thick else 1
    sp = rng.uniform(*r.spacing)
    spacing = np.array([sp, sp, 1.0 if thick else sp])
    perm = rng.permutation(3) if rng.random() < r.p_reorient else np.arange(3)
    signs = rng.choice([-1.0, 1.0], 3) if rng.random() < r.p_reorient else np.ones(3)
    cols = (_rotation(rng, r.max_rotation_deg) @ frame)[:, perm] * signs * spacing[perm]
    size = rng.uniform(*r.brain_scale) * (1 + rng.uniform(-r.anisotropic_scale, r.anisotropic_scale, 3))
    thick_axis = int(np.flatnonzero(perm == 2)[0])

    # content: source voxel = inv(A_src) @ S^-1 @ world_out, with S scaling the brain about its centre
    hb = source.head_box
    lo = np.array([s.start for s in hb], float)
    box = np.array([s.stop - s.start for s in hb], float)
    if not skull:
        box -= 24  # the skull margin is empty: a tighter field of view
        lo += 12
    centre_vox = lo + (box - 1) / 2
    centre = source.affine[:3, :3] @ centre_vox + source.affine[:3, 3]
    m = np.linalg.solve(source.affine[:3, :3], np.diag(1 / size) @ cols)
    corners = (np.indices((2, 2, 2)).reshape(3, -1).T * (box - 1)) - (box - 1) / 2
    extent = np.abs(np.linalg.solve(m, corners.T)).max(1)
    shape = tuple(int(np.ceil(2 * e)) + 1 for e in extent)
    shape = tuple(s + (-s) % k if a == thick_axis else s for a, s in enumerate(shape))
    start = -(np.array(shape) - 1) / 2
    out_aff = np.eye(4)
    out_aff[:3, :3] = cols
    out_aff[:3, 3] = centre + cols @ start
    off = centre_vox + m @ start - np.array([s.start for s in hb])
    return out_aff, m, off, shape, thick_axis, k


def _sample_into(
    out: np.ndarray, field: np.ndarray, box: tuple[slice, ...], m: np.ndarray, off: np.ndarray
) -> None:
    """Resample a field that lives on ``box`` of the painted grid, only where output voxels can see it."""
    lo = np.array([b.start for b in box], float)
    corners = lo + np.indices((2, 2, 2)).reshape(3, -1).T * (np.array(field.shape) - 1)
    o = np.linalg.solve(m, (corners - off).T)
    start = np.clip(np.floor(o.min(1)).astype(int) - 1, 0, out.shape)
    stop = np.clip(np.ceil(o.max(1)).astype(int) + 2, 0, out.shape)
    if np.any(stop <= start):
        return
    out[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))] = _affine(
        field, m, m @ start + off - lo, tuple(stop - start)
    )


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    n = ndi.gaussian_filter(rng.standard_normal(shape, np.float32), sigma)
    return n / max(float(n.std()), 1e-6)


def _reduce(a: np.ndarray, axis: int, k: int) -> np.ndarray:
    """Average groups of ``k`` 1 mm sub-slices into one thick slice (a box slice profile)."""
    shape = a.shape[:axis] + (a.shape[axis] // k, k) + a.shape[axis + 1 :]
    return a.reshape(shape).mean(axis + 1)


def _expand(a: np.ndarray, axis: int, k: int) -> np.ndarray:
    """Linear interpolation of thick slices back to 1 mm sub-slice centres."""
    zoom = [1.0] * 3
    zoom[axis] = k
    return ndi.zoom(a, zoom, order=1, mode="nearest", grid_mode=True)


def _bias(rng: np.random.Generator, shape: tuple[int, ...], peak_to_peak: float) -> np.ndarray:
    """Smooth multiplicative field: a random cubic Legendre polynomial over the field of view."""
    basis = [np.polynomial.legendre.legvander(np.linspace(-1, 1, n), 3).astype(np.float32) for n in shape]
    decay = 1.0 / (1.0 + np.add.outer(np.add.outer(np.arange(4), np.arange(4)), np.arange(4)))
    coef = (rng.standard_normal((4, 4, 4)) * decay).astype(np.float32)
    coef[0, 0, 0] = 0.0
    log = np.einsum("ijl,ai,bj,cl->abc", coef, *basis, optimize=True)
    log *= peak_to_peak / max(float(np.ptp(log)), 1e-6)
    return np.exp(log)


def _scanner(img: np.ndarray, rng: np.random.Generator, r: Recipe, skull: bool) -> np.ndarray:
    """Bias field, Rician noise and blur on the output grid; skull-stripped: zeros outside the brain."""
    inside = img > 1e-3
    img *= _bias(rng, img.shape, rng.uniform(*r.bias))
    sd = rng.uniform(*r.noise)
    img = np.hypot(
        img + sd * rng.standard_normal(img.shape, np.float32), sd * rng.standard_normal(img.shape, np.float32)
    )
    img = ndi.gaussian_filter(img, rng.uniform(*r.blur))
    return img if skull else img * inside


def _to_nifti(
    img: np.ndarray, masks: list[np.ndarray], affine: np.ndarray, rng: np.random.Generator, r: Recipe
) -> SynthScan:
    """Image (float32, or int16 with or without scl_slope, read back as a file would be) and masks."""
    image = nib.Nifti1Image(img.astype(np.float32), affine)
    if rng.random() < r.p_int16:
        if rng.random() >= r.p_slope:
            image = nib.Nifti1Image(np.clip(np.rint(img), 0, 32767).astype(np.float32), affine)
        image.set_data_dtype(np.int16)
    out = []
    for im in (image, *(nib.Nifti1Image(m, affine) for m in masks)):
        im.set_qform(affine, code=1)
        im.set_sform(affine, code=1)
        out.append(im)
    if out[0].get_data_dtype() == np.int16:
        out[0] = nib.Nifti1Image.from_bytes(out[0].to_bytes())
    return SynthScan(*out)
