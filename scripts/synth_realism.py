"""Compare synthetic FLAIR (mhunet_deploy.synth) with real FLAIR: statistics side by side and a figure.

Real references: patient26 (skull-stripped, MNI 1 mm, with lesion mask; the validation case, used here
only to measure image statistics) and the raw clinical scans (no labels: histogram and noise only).

    python scripts/synth_realism.py [docs/synth_vs_real.png] [--seeds 4] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from mhunet_deploy.synth import SynthSource, synth_volume

ROOT = Path(__file__).resolve().parents[1]
# one fixed 1 mm, skull-off, unrotated geometry: tissue maps then line up for per-tissue statistics
CALIBRATION = dict(
    p_skull=0.0,
    p_thick=0.0,
    max_rotation_deg=0.0,
    p_reorient=0.0,
    spacing=(1.0, 1.0),
    brain_scale=(1.0, 1.0),
    anisotropic_scale=0.0,
    p_int16=0.0,
)
PCTS = (5, 25, 50, 75, 95, 99)


def local_sd(data: np.ndarray, axes: int = 3) -> np.ndarray:
    """Standard deviation over a 3x3(x3) neighbourhood: noise plus fine texture."""
    size = (3, 3, 3) if axes == 3 else (3, 3, 1)
    mean = ndi.uniform_filter(data, size)
    return np.sqrt(np.maximum(ndi.uniform_filter(data * data, size) - mean * mean, 0))


def tissue_stats(
    data: np.ndarray, wm: np.ndarray, gm: np.ndarray, csf: np.ndarray, lesion: np.ndarray
) -> dict:
    """Per-tissue levels, normalised by the median brain intensity (data == 0 is outside the brain)."""
    brain = data != 0
    med = float(np.median(data[brain]))
    d = data / med
    core = ndi.binary_erosion(brain, iterations=3)
    wm_m = (wm > 0.9) & ~ndi.binary_dilation(lesion, iterations=2) & core
    out = {f"p{p}": v for p, v in zip(PCTS, np.percentile(d[brain], PCTS), strict=True)}
    wm_level = float(d[wm_m].mean())
    out |= {
        "WM": wm_level,
        "GM/WM": float(d[(gm > 0.7) & core].mean()) / wm_level,
        "CSF/WM": float(d[(csf > 0.9) & core].mean()) / wm_level,
        "lesion/WM": float(d[lesion].mean()) / wm_level if lesion.any() else np.nan,
        "lesion/brain mean": float(d[lesion].mean() / d[brain].mean()) if lesion.any() else np.nan,
        "WM local sd": float(np.median(local_sd(d)[wm_m])),
    }
    return out


def scan_stats(data: np.ndarray, zooms: tuple[float, ...]) -> dict:
    """Label-free statistics for any scan (skull on or off): central-brain histogram and noise."""
    data = np.asarray(data, np.float32)
    head = data > 0.1 * np.percentile(data, 99)
    # central region: a box of half the head extent, mostly brain parenchyma in any orientation
    pts = np.argwhere(head)
    lo, hi = pts.min(0), pts.max(0)
    c, h = (lo + hi) / 2, (hi - lo) / 4
    box = tuple(slice(int(a - b), int(a + b) + 1) for a, b in zip(c, h, strict=True))
    region = data[box][head[box]]
    med = float(np.median(region))
    slice_axis = int(np.argmax(zooms))
    sd = np.moveaxis(local_sd(np.moveaxis(data, slice_axis, 2), axes=2), 2, slice_axis)
    flat = (np.abs(data / med - 1) < 0.1)[box]
    return {f"c{p}": v for p, v in zip(PCTS, np.percentile(region / med, PCTS), strict=True)} | {
        "in-plane local sd": float(np.median(sd[box][flat]) / med),
    }


def fit_template(source: SynthSource, brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Affine (per-axis scale + shift, voxel to template voxel) matching the brain masks' moments.

    patient26 was registered to MNI without scaling and its brain is smaller than the template's.
    """
    tb = (source.gm + source.wm + source.csf) > 0.5
    m = np.linalg.solve(source.affine, affine)
    pts_t = np.argwhere(tb)
    pts = (m[:3, :3] @ np.argwhere(brain).T).T + m[:3, 3]
    scale = pts_t.std(0) / pts.std(0)
    a = np.diag(scale) @ m[:3, :3]
    return np.c_[a, pts_t.mean(0) - a @ np.argwhere(brain).mean(0)]


def tile(img: nib.Nifti1Image, label: str, offset_mm: float = 12.0, size: int = 240) -> Image.Image:
    """An axial slice (canonical orientation), windowed at the brain's 99.5th percentile, labelled."""
    can = nib.as_closest_canonical(img)
    data = np.asarray(can.dataobj, np.float32)
    k = int(round(np.linalg.solve(can.affine, [0, 0, offset_mm, 1])[2]))
    s = data[:, :, np.clip(k, 0, data.shape[2] - 1)].T[::-1]
    zx, zy = can.header.get_zooms()[:2]
    w = s / max(np.percentile(data[data > 0], 99.5), 1e-6) * 255
    pic = Image.fromarray(np.clip(w, 0, 255).astype(np.uint8))
    pic = pic.resize((max(1, round(s.shape[1] * zx)), max(1, round(s.shape[0] * zy))), Image.BILINEAR)
    pic.thumbnail((size, size))
    canvas = Image.new("L", (size, size + 16))
    canvas.paste(pic, ((size - pic.width) // 2, 16 + (size - pic.height) // 2))
    ImageDraw.Draw(canvas).text((3, 2), label, fill=255)
    return canvas


def montage(rows: list[list[Image.Image]]) -> Image.Image:
    w, h = rows[0][0].size
    out = Image.new("L", (w * max(map(len, rows)), h * len(rows)))
    for i, row in enumerate(rows):
        for j, t in enumerate(row):
            out.paste(t, (j * w, i * h))
    return out


def table(columns: dict[str, list[dict]]) -> str:
    keys = list(dict.fromkeys(k for runs in columns.values() for run in runs for k in run))
    lines = ["| statistic | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for k in keys:
        cells = []
        for runs in columns.values():
            v = np.array([run[k] for run in runs if k in run], float)
            v = v[np.isfinite(v)]
            cells.append(
                "" if not v.size else f"{v.mean():.3f}" + (f" ± {v.std():.3f}" if v.size > 1 else "")
            )
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", type=Path, default=ROOT / "docs" / "synth_vs_real.png")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--seeds", type=int, default=4)
    args = ap.parse_args()

    source = SynthSource.load(args.data)
    real = nib.load(args.data / "open_ms/patient26/FLAIR.nii.gz")
    real_les = np.asarray(nib.load(args.data / "open_ms/patient26/lesions.nii.gz").dataobj) > 0
    rd = np.asarray(real.dataobj, np.float32)
    fit = fit_template(source, rd != 0, real.affine)
    maps = [
        ndi.affine_transform(x, fit[:, :3], fit[:, 3], output_shape=rd.shape, order=1)
        for x in (source.wm, source.gm, source.csf)
    ]
    p26 = [tissue_stats(rd, *maps, real_les) | scan_stats(rd, real.header.get_zooms())]
    clinical = sorted((args.data / "clinical_flair").glob("*.nii.gz"))
    clin = [scan_stats(np.asarray(nib.load(p).dataobj), nib.load(p).header.get_zooms()) for p in clinical]

    subjects = source.subjects
    calib, full, tiles, times = [], [], [], []
    for seed in range(args.seeds):
        subject = subjects[seed * 7 % len(subjects)]
        img, mask, _ = synth_volume(source, subject, seed, **CALIBRATION)
        d = np.asarray(img.dataobj, np.float32)
        maps = [source.resample_to(x, img) for x in (source.wm, source.gm, source.csf)]
        calib.append(
            tissue_stats(d, *maps, np.asarray(mask.dataobj) > 0) | scan_stats(d, img.header.get_zooms())
        )
        t = time.process_time()
        img2, _, _ = synth_volume(source, subject, 1000 + seed)
        times.append(time.process_time() - t)
        full.append(scan_stats(img2.get_fdata(dtype=np.float32), img2.header.get_zooms()))
        tiles += [tile(img, f"synth 1mm s{seed} {subject}"), tile(img2, f"synth full s{1000 + seed}")]
    print(
        table(
            {
                "synthetic 1 mm (calib.)": calib,
                "synthetic full recipe": full,
                "patient26": p26,
                "clinical (2)": clin,
            }
        )
    )
    print(f"\nsynth_volume CPU time, full recipe: {np.mean(times):.2f} ± {np.std(times):.2f} s")
    real_tiles = [tile(real, "patient26 (real)")] + [
        tile(nib.load(p), p.name[:6] + " (real)") for p in clinical
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    montage([real_tiles, tiles[0::2], tiles[1::2]]).save(args.out)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
