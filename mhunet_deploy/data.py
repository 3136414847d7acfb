"""Training data: real labelled scans and synthetic heads -> one compact pack of model-grid slices.

Every volume goes through `preprocess.prepare`, the very function `mhunet infer` uses, and its masks
through the same geometry (nearest neighbour), so training and inference see identical slices.

A pack is one compressed ``.npz``: uint8 slices (each volume's z-scores quantised over its own range;
8 bits step ~0.03 SD, far under the scan's noise), uint8 lesion and brain masks, and a table with one
row per volume (subject, domain, fold, slice thickness, ...). It is built once on a CPU and carried to
a GPU (a few tens of MB where the raw volumes are larger), then lives on the GPU for the whole run.

Real cases come from a JSON manifest (``manifests/real_ms.json``) or an nnU-Net folder. Brain masks are
a file, ``"nonzero"`` (skull-stripped scans: brain = the stripped volume's support) or absent (the brain
output is not trained on that volume).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from .errors import InputError
from .io.nifti import Volume, load_volume, volume_from_image
from .preprocess import prepare

#: Slices whose image has less than this fraction of foreground carry no anatomy worth training on.
MIN_FOREGROUND_FRACTION = 0.02
#: Thick-slice copies of every 1 mm real scan: clinical FLAIR is acquired at 3-8 mm.
THICK_SLICES_MM = (5, 7)
#: Kinds of packed volume: the scan itself, a thick-slice copy of it, a synthetic head.
KINDS = ("real", "thick", "synthetic")
_BRAIN_EPS = 1e-6


@dataclass(frozen=True)
class Case:
    """One labelled real scan. ``brain`` is a mask file, "nonzero" (skull-stripped) or None."""

    case: str
    subject: str
    domain: str
    fold: int
    image: Path
    lesions: Path
    brain: Path | str | None = None


def read_manifest(path: Path, root: Path | None = None) -> list[Case]:
    """Cases of a JSON manifest; relative paths are under ``root`` (default: the manifest's "root",
    itself relative to the manifest file)."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
        base = Path(root) if root is not None else (path.parent / spec.get("root", ".")).resolve()
        cases = []
        for c in spec["cases"]:
            brain = c.get("brain")
            cases.append(
                Case(
                    case=c["case"],
                    subject=c.get("subject", c["case"]),
                    domain=c.get("domain", "default"),
                    fold=int(c.get("fold", 0)),
                    image=base / c["image"],
                    lesions=base / c["lesions"],
                    brain=brain if brain in (None, "nonzero") else base / brain,
                )
            )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a readable training manifest ({e}); see manifests/README.md") from e
    missing = [str(p) for c in cases for p in (c.image, c.lesions, c.brain) if isinstance(p, Path)]
    missing = [p for p in missing if not Path(p).exists()]
    if missing:
        raise InputError(f"{path}: {len(missing)} file(s) missing, e.g. {missing[0]}; check --data-root")
    return cases


def nnunet_cases(folder: Path, folds: int = 5) -> list[Case]:
    """Cases of an nnU-Net folder (imagesTr/CASE_0000.nii.gz + labelsTr/CASE.nii.gz); one subject per
    case, folds assigned round-robin in name order; brains unknown."""
    images, labels = folder / "imagesTr", folder / "labelsTr"
    if not images.is_dir() or not labels.is_dir():
        raise InputError(f"{folder}: expected imagesTr/ and labelsTr/ (nnU-Net layout)")
    cases = []
    for img in sorted(images.glob("*_0000.nii*")):
        name = re.sub(r"_0000\.nii(\.gz)?$", "", img.name)
        lab = next((p for p in (labels / f"{name}.nii.gz", labels / f"{name}.nii") if p.exists()), None)
        if lab is None:
            raise InputError(f"{img}: no label {name}.nii.gz in {labels}")
        cases.append(Case(name, name, "nnunet", len(cases) % folds, img, lab))
    if len(cases) < 2:
        raise InputError(f"{folder}: need at least 2 image/label pairs")
    return cases


@dataclass
class PackPart:
    """The model-grid slices of one volume and its row of the volume table."""

    image: np.ndarray  # (S, G, G) uint8
    lesion: np.ndarray  # (S, G, G) uint8
    brain: np.ndarray  # (S, G, G) uint8
    anatomy: np.ndarray  # (S,) bool: enough foreground to train on
    info: dict[str, Any]


def _quantise(z: np.ndarray) -> tuple[np.ndarray, float, float]:
    lo, hi = float(z.min()), float(z.max())
    scale = 255.0 / max(hi - lo, 1e-6)
    return np.rint((z - lo) * scale).astype(np.uint8), lo, hi


def _brain_from_nonzero(data: np.ndarray) -> np.ndarray:
    """Support of a skull-stripped scan: non-zero voxels, holes filled, largest component."""
    mask = ndi.binary_fill_holes(np.abs(data) > _BRAIN_EPS)
    labels, n = ndi.label(mask)
    if n > 1:
        mask = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    return mask


def pack_volume(
    volume: Volume, lesion: np.ndarray, brain: np.ndarray | None, info: dict[str, Any]
) -> PackPart:
    """Preprocess like inference; masks through the same geometry (nearest neighbour)."""
    slices, geometry = prepare(volume)
    z = slices[:, 0]
    image, lo, hi = _quantise(z)
    to_grid = lambda m: geometry.to_model_grid(m.astype(np.float32), order=0)[:, 0] > 0.5  # noqa: E731
    les = to_grid(lesion).astype(np.uint8)
    known = brain is not None
    br = to_grid(brain).astype(np.uint8) if known else np.zeros_like(les)
    flat = z.reshape(len(z), -1)
    anatomy = ((flat > flat.min(axis=1, keepdims=True) + 1e-3).mean(axis=1) >= MIN_FOREGROUND_FRACTION) | (
        les.reshape(len(les), -1).any(axis=1)
    )
    zooms = np.linalg.norm(volume.image.affine[:3, :3], axis=0)
    slice_mm = float(np.linalg.norm(geometry.ras_affine[:3, 2]))
    head = z > z.min() + 0.5
    row = {
        "lo": lo,
        "hi": hi,
        "brain_known": known,
        # skull on: much signal outside the brain (unknown brain: assume a raw, skull-on scan)
        "skull_on": (not known) or bool((head & (br == 0)).sum() > 0.2 * max(int(br.sum()), 1)),
        "grid": grid_key(geometry.model_affine, len(z)),
        "slice_mm": slice_mm,
        "voxel_mm3": float(np.prod(zooms)),
        **info,
    }
    return PackPart(image, les, br, anatomy, row)


def grid_key(model_affine: np.ndarray, slices: int) -> str:
    """Names the model grid in world space: slices of two volumes with one key show the same place."""
    return f"{slices}:" + ",".join(f"{v:.1f}" for v in np.asarray(model_affine)[:3].ravel())


def paint_masks(source_dir: Path, exclude: tuple[str, ...] = ("patient26",)) -> dict[str, np.ndarray]:
    """The Lesjak lesion masks (MNI grid) as model-grid slices that hold lesion, for pasting onto real
    MNI-grid backgrounds: mask (N, G, G) uint8, z (N,) slice index, grid (N,) key, subject (N,)."""
    from .preprocess import Geometry

    masks, zs, grids, subjects = [], [], [], []
    for path in sorted((Path(source_dir) / "open_ms/lesion_masks_mni").glob("patient*_lesions.nii.gz")):
        subject = path.name.removesuffix("_lesions.nii.gz")
        if subject in exclude:
            continue
        volume = volume_from_image(nib.load(path))
        geometry = Geometry.plan(volume, 256, 1.0, 0.5)
        grid = (geometry.to_model_grid(volume.data, order=0)[:, 0] > 0.5).astype(np.uint8)
        keep = np.flatnonzero(grid.reshape(len(grid), -1).any(axis=1))
        masks.append(grid[keep])
        zs.append(keep.astype(np.int16))
        grids += [grid_key(geometry.model_affine, len(grid))] * len(keep)
        subjects += [subject] * len(keep)
    if not masks:
        raise InputError(f"no lesion masks under {Path(source_dir) / 'open_ms/lesion_masks_mni'}")
    return {
        "mask": np.concatenate(masks),
        "z": np.concatenate(zs),
        "grid": np.asarray(grids),
        "subject": np.asarray(subjects),
    }


def thicken(volume: Volume, masks: list[np.ndarray | None], k: int) -> tuple[Volume, list]:
    """A k-times thicker axial acquisition of a 1 mm scan: slab means along RAS S (a box slice profile,
    as a 2D multi-slice FLAIR integrates its slice), masks slab-averaged and cut at 0.5."""
    from nibabel import orientations

    ornt = orientations.io_orientation(volume.image.affine)
    axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])  # the input axis that runs along S
    n = volume.data.shape[axis] // k

    def slab(a: np.ndarray) -> np.ndarray:
        a = np.moveaxis(np.asarray(a, np.float32), axis, 0)[: n * k]
        return np.moveaxis(a.reshape(n, k, *a.shape[1:]).mean(1), 0, axis)

    step = np.eye(4)
    step[axis, axis] = k
    step[axis, 3] = (k - 1) / 2
    affine = volume.image.affine @ step
    image = nib.Nifti1Image(slab(volume.data), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return volume_from_image(image), [None if m is None else slab(m) >= 0.5 for m in masks]


def pack_case(case: Case, thick_mm: Iterable[int] = THICK_SLICES_MM) -> list[PackPart]:
    """A real case, plus thick-slice copies when it is a ~1 mm isotropic scan."""
    volume = load_volume(case.image)
    lesion = np.asarray(nib.load(case.lesions).dataobj) > 0
    if lesion.shape != volume.data.shape:
        raise InputError(f"{case.lesions}: shape {lesion.shape} differs from its image {volume.data.shape}")
    if case.brain == "nonzero":
        brain = _brain_from_nonzero(volume.data)
    elif case.brain is not None:
        brain = np.asarray(nib.load(case.brain).dataobj) > 0
    else:
        brain = None
    base = {"case": case.case, "subject": case.subject, "domain": case.domain, "fold": case.fold}
    parts = [pack_volume(volume, lesion, brain, {**base, "kind": "real"})]
    if max(np.linalg.norm(volume.image.affine[:3, :3], axis=0)) <= 1.5:
        for k in thick_mm:
            thick, (les_k, brain_k) = thicken(volume, [lesion, brain], k)
            parts.append(
                pack_volume(thick, les_k, brain_k, {**base, "case": f"{case.case}-{k}mm", "kind": "thick"})
            )
    return parts


@lru_cache(maxsize=2)
def _source(source_dir: Path) -> Any:
    """One template/mask load per worker process, not one per generated volume."""
    from .synth import SynthSource

    return SynthSource.load(source_dir)


def _synth_job(args: tuple[Path, str, int]) -> PackPart:
    from .synth import synth_volume

    source_dir, subject, seed = args
    scan = synth_volume(_source(source_dir), subject, seed)
    info = {"case": f"synth-{subject}-s{seed}", "subject": f"synth-{subject}", "domain": "synthetic"}
    return pack_volume(
        volume_from_image(scan.image),
        np.asarray(scan.lesions.dataobj) > 0,
        np.asarray(scan.brain.dataobj) > 0,
        {**info, "fold": -1, "kind": "synthetic"},
    )


def pack_synthetic(
    source_dir: Path,
    volumes: int,
    seed: int,
    workers: int,
    exclude: tuple[str, ...] = ("patient26",),
    on_volume: Callable[[], None] | None = None,
) -> list[PackPart]:
    """``volumes`` synthetic heads cycling over the lesion-mask subjects (fold -1: always training).

    ``exclude`` keeps the lesion masks of real evaluation subjects out (patient26 is a real case).
    """
    from .synth import SynthSource

    subjects = [s for s in SynthSource.load(source_dir).subjects if s not in exclude]
    jobs = [(Path(source_dir), subjects[i % len(subjects)], seed * 100_000 + i) for i in range(volumes)]
    parts = []
    with ProcessPoolExecutor(workers) if workers > 1 else _Serial() as pool:
        for part in pool.map(_synth_job, jobs):
            parts.append(part)
            if on_volume:
                on_volume()
    return parts


class _Serial:
    """``ProcessPoolExecutor``'s map in this process (one worker: no fork, easier to debug)."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    map = staticmethod(map)


@dataclass
class Pack:
    """Slices of many volumes: ``image``/``lesion``/``brain`` (S, G, G) uint8, ``volume`` (S,) row index
    into ``table`` (column -> array, one entry per volume), ``z`` (S,) slice index in its volume."""

    image: np.ndarray
    lesion: np.ndarray
    brain: np.ndarray
    anatomy: np.ndarray
    volume: np.ndarray
    z: np.ndarray
    table: dict[str, np.ndarray] = field(default_factory=dict)
    #: Lesion masks for pasting (`paint_masks`), or None.
    paint: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.image)

    @property
    def volumes(self) -> int:
        return len(self.table["case"])

    def column(self, name: str) -> np.ndarray:
        """A volume-table column broadcast to slices."""
        return self.table[name][self.volume]

    def select_volumes(self, keep: np.ndarray) -> Pack:
        """The slices of the volumes where ``keep`` (one bool per volume) holds, re-indexed."""
        keep = np.asarray(keep, bool)
        new_index = np.cumsum(keep) - 1
        sel = keep[self.volume]
        return Pack(
            self.image[sel],
            self.lesion[sel],
            self.brain[sel],
            self.anatomy[sel],
            new_index[self.volume[sel]].astype(np.int32),
            self.z[sel],
            {k: v[keep] for k, v in self.table.items()},
            self.paint,
        )

    @classmethod
    def from_parts(cls, parts: list[PackPart]) -> Pack:
        if not parts:
            raise InputError("no training volumes: give --data and/or --synthetic")
        keys = sorted({k for p in parts for k in p.info})
        table = {k: np.asarray([p.info.get(k) for p in parts]) for k in keys}
        return cls(
            np.concatenate([p.image for p in parts]),
            np.concatenate([p.lesion for p in parts]),
            np.concatenate([p.brain for p in parts]),
            np.concatenate([p.anatomy for p in parts]),
            np.concatenate([np.full(len(p.image), i, np.int32) for i, p in enumerate(parts)]),
            np.concatenate([np.arange(len(p.image), dtype=np.int16) for p in parts]),
            table,
        )

    @classmethod
    def concat(cls, packs: list[Pack]) -> Pack:
        offsets = np.cumsum([0] + [p.volumes for p in packs])
        keys = set(packs[0].table)
        if any(set(p.table) != keys for p in packs):
            raise InputError("packs of different versions cannot be mixed; rebuild them with mhunet pack")
        table = {k: np.concatenate([p.table[k] for p in packs]) for k in sorted(keys)}
        paints = [p.paint for p in packs if p.paint is not None]
        return cls(
            np.concatenate([p.image for p in packs]),
            np.concatenate([p.lesion for p in packs]),
            np.concatenate([p.brain for p in packs]),
            np.concatenate([p.anatomy for p in packs]),
            np.concatenate([p.volume + o for p, o in zip(packs, offsets, strict=False)]).astype(np.int32),
            np.concatenate([p.z for p in packs]),
            table,
            paints[0] if paints else None,
        )

    def save(self, path: Path) -> Path:
        """One compressed .npz (masks are sparse and the background is flat: they compress well)."""
        from .files import atomic_write

        arrays = {f"table.{k}": v for k, v in self.table.items()}
        arrays.update({f"paint.{k}": v for k, v in (self.paint or {}).items()})
        arrays.update(
            image=self.image,
            lesion=self.lesion,
            brain=self.brain,
            anatomy=self.anatomy,
            volume=self.volume,
            z=self.z,
        )

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)

        atomic_write(Path(path), write)
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> Pack:
        try:
            with np.load(path, allow_pickle=False) as z:
                table = {k.removeprefix("table."): z[k] for k in z.files if k.startswith("table.")}
                paint = {k.removeprefix("paint."): z[k] for k in z.files if k.startswith("paint.")}
                return cls(
                    z["image"],
                    z["lesion"],
                    z["brain"],
                    z["anatomy"],
                    z["volume"],
                    z["z"],
                    table,
                    paint or None,
                )
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"{path}: not a training pack ({e}); build one with mhunet pack") from e

    def dequantised(self, idx: np.ndarray) -> np.ndarray:
        """float32 z-scores of slices ``idx`` (what `prepare` produced), for CPU use and tests."""
        lo, hi = self.column("lo")[idx].astype(np.float32), self.column("hi")[idx].astype(np.float32)
        scale = ((hi - lo) / 255.0)[:, None, None]
        return self.image[idx].astype(np.float32) * scale + lo[:, None, None]


def load_data(
    sources: list[Path],
    root: Path | None = None,
    on_volume: Callable[[], None] | None = None,
) -> Pack:
    """Packs (.npz), manifests (.json) and nnU-Net folders, concatenated into one pack."""
    packs = []
    for src in sources:
        src = Path(src)
        if src.suffix == ".npz":
            packs.append(Pack.load(src))
            continue
        cases = nnunet_cases(src) if src.is_dir() else read_manifest(src, root)
        parts = []
        for case in cases:
            parts.extend(pack_case(case))
            if on_volume:
                on_volume()
        packs.append(Pack.from_parts(parts))
    return Pack.concat(packs)
