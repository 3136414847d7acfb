"""A one-page QC montage (PNG): axial FLAIR slices with the lesion mask (and the brain mask) outlined,
and a header.

Pillow only (no matplotlib: the runtime side stays lean). Slices are shown in radiological
convention (patient right on image left, anterior up), which the page states and marks with R/L on
every tile. Pixels keep the voxel aspect ratio from the zooms. Image and mask are brought to the
closest canonical (RAS) orientation here, so any input orientation gives the same picture.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from .errors import InputError
from .files import atomic_write
from .report import DISCLAIMER

#: A4 portrait at 150 dpi: prints on one page and opens at a readable size on screen.
PAGE_SIZE = (1240, 1754)
DPI = 150
GRID = (4, 4)  # columns, rows
MARGIN = 24
GAP = 8
HEADER_HEIGHT = 232
FOOTER_HEIGHT = 40
OUTLINE_RGB = (255, 40, 40)
#: The brain mask's outline: cyan, far from the lesions' red and from grey.
BRAIN_RGB = (40, 200, 255)
OUTLINE_PX = 2
BACKGROUND_RGB = (12, 12, 14)
TEXT_RGB = (235, 235, 235)
MUTED_RGB = (150, 150, 158)
WARN_RGB = (255, 176, 32)
#: Slices whose foreground area is below this fraction of the largest are skull cap / neck: skipped.
MIN_SLICE_AREA_FRACTION = 0.15
#: Foreground = voxels above this fraction of the way from the 1st to the 99.5th percentile (the 1st
#: percentile is the background level of skull-stripped, z-scored and raw scanner images alike).
FOREGROUND_FRACTION = 0.1


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text`` shortened in the middle with "..." until it fits ``width`` pixels (long input paths)."""
    fitted, keep = text, len(text)
    while keep > 8 and draw.textlength(fitted, font=font) > width:
        keep -= 2
        head = keep // 3
        fitted = f"{text[:head]}...{text[head - keep :]}"
    return fitted


def _canonical_mask(image: nib.spatialimages.SpatialImage, mask: Any) -> np.ndarray:
    """A mask (NIfTI image, or an array on the image grid) as a RAS-ordered boolean array."""
    if not isinstance(mask, nib.spatialimages.SpatialImage):
        mask = nib.Nifti1Image(np.asarray(mask).astype(np.uint8), image.affine)
    if mask.shape[:3] != image.shape[:3] or not np.allclose(mask.affine, image.affine, atol=1e-3):
        raise InputError(f"QC mask grid {mask.shape} does not match image grid {image.shape}")
    return np.squeeze(np.asanyarray(nib.as_closest_canonical(mask).dataobj)) > 0


def _to_canonical(
    image: nib.spatialimages.SpatialImage, mask: Any
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...], np.ndarray]:
    """RAS-ordered image, boolean mask, zooms and affine; ``mask`` may be an array on the image grid."""
    labels = _canonical_mask(image, mask)
    img_c = nib.as_closest_canonical(image)
    data = np.squeeze(img_c.get_fdata(dtype=np.float32))
    if data.ndim != 3 or labels.shape != data.shape:
        raise InputError(f"QC needs a single 3D volume, got image shape {image.shape}")
    # From the affine, like the pipeline: pixdim may be 0 or differ beside a valid sform.
    zooms = tuple(float(z) for z in np.linalg.norm(img_c.affine[:3, :3], axis=0))
    return np.nan_to_num(data), labels, zooms, img_c.affine


def foreground(image: np.ndarray) -> np.ndarray:
    """Head/brain voxels: a low threshold between the background level and a robust maximum."""
    lo, hi = (float(v) for v in np.percentile(image, [1.0, 99.5]))
    return image > lo + FOREGROUND_FRACTION * (hi - lo)


def choose_slices(image: np.ndarray, mask: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` axial slice indices: the brain's z range cut into ``n`` equal slabs, and in each slab
    the slice with the largest lesion area (its middle slice when it has no lesion).

    So the montage covers the whole brain evenly and still shows every slab's worst lesion slice.
    """
    area = foreground(image).sum(axis=(0, 1))
    brain = np.flatnonzero(area >= MIN_SLICE_AREA_FRACTION * area.max()) if area.any() else []
    span = np.arange(brain[0], brain[-1] + 1) if len(brain) else np.arange(image.shape[2])
    lesion_area = mask.sum(axis=(0, 1))
    chosen = []
    for slab in np.array_split(span, n):
        if slab.size:
            best = slab[np.argmax(lesion_area[slab])]
            chosen.append(int(best if lesion_area[best] else slab[slab.size // 2]))
    return chosen


def _window(image: np.ndarray) -> tuple[float, float]:
    """Display window: 0.5th-99.5th percentile of the foreground (keeps bright lesions unsaturated)."""
    values = image[foreground(image)]
    if values.size == 0:
        values = image.ravel()
    lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    return lo, hi if hi > lo else lo + 1.0


def render_axial(
    image: np.ndarray,
    mask: np.ndarray,
    k: int,
    zooms: tuple[float, ...],
    window: tuple[float, float],
    max_size: tuple[int, int],
    brain: np.ndarray | None = None,
) -> Image.Image:
    """RGB tile of axial slice ``k`` of RAS-ordered arrays, radiological, true aspect, mask outlined
    (and the brain mask, in BRAIN_RGB beneath the lesion outline).

    Rows run anterior (top) to posterior, columns patient right (left) to left: the arrays'
    (x, y) slice transposed and flipped on both axes. An outline is drawn at display resolution
    (mask upsampled with nearest neighbour, XOR its 2D erosion) so it stays thin and crisp.
    """
    grey = np.clip((image[:, :, k] - window[0]) / (window[1] - window[0]), 0.0, 1.0)
    grey = (grey.T[::-1, ::-1] * 255.0 + 0.5).astype(np.uint8)
    width_mm, height_mm = grey.shape[1] * zooms[0], grey.shape[0] * zooms[1]
    scale = min(max_size[0] / width_mm, max_size[1] / height_mm)
    size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    tile = np.array(Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR).convert("RGB"))
    for outlined, rgb in ((brain, BRAIN_RGB), (mask, OUTLINE_RGB)):
        if outlined is None:
            continue
        plane = outlined[:, :, k].T[::-1, ::-1].astype(np.uint8) * 255
        big = np.array(Image.fromarray(plane).resize(size, Image.Resampling.NEAREST)) > 0
        tile[big ^ ndimage.binary_erosion(big, structure=np.ones((3, 3), bool), iterations=OUTLINE_PX)] = rgb
    return Image.fromarray(tile)


def _crop_to_head(
    image: np.ndarray, mask: np.ndarray, zooms: tuple[float, ...], margin_mm: float = 12.0
) -> tuple[slice, ...]:
    """The x, y crop to the foreground (and mask) bounding box plus a margin, so the brain fills tiles."""
    boxes = ndimage.find_objects((foreground(image) | mask).any(axis=2).astype(np.uint8))
    if not boxes:
        return (slice(None), slice(None))
    sx, sy = boxes[0]
    mx, my = (round(margin_mm / z) for z in zooms[:2])
    return (slice(max(sx.start - mx, 0), sx.stop + mx), slice(max(sy.start - my, 0), sy.stop + my))


def _header(draw: ImageDraw.ImageDraw, report: Mapping[str, Any], source: str) -> None:
    """Title, case facts, provenance and the disclaimer, left; the legend, right."""
    model = report.get("model") or {}
    created = report.get("created")
    stamp = datetime.fromisoformat(created) if created else datetime.now(timezone.utc)
    volume = report.get("total_volume_ml")
    brain = report.get("brain") or {}
    brain_ml = brain.get("volume_ml")
    sha = str(model.get("sha256", ""))[:12]
    backend = report.get("backend", "unknown")
    precision = report.get("precision")
    x, y = MARGIN, MARGIN
    draw.text((x, y), "MS lesion segmentation - QC montage", font=_font(34), fill=TEXT_RGB)
    y += 50
    legend_x = PAGE_SIZE[0] - MARGIN - 300
    draw.text((x, y), _fit(draw, source, _font(18), legend_x - x - 20), font=_font(18), fill=MUTED_RGB)
    y += 32
    facts = (
        f"Lesions: {report.get('lesion_count', 'n/a')}      "
        f"Total volume: {f'{volume:.2f} mL' if isinstance(volume, (int, float)) else 'n/a'}      "
        f"Brain: {f'{brain_ml:.0f} mL' if isinstance(brain_ml, (int, float)) else 'no mask'}"
    )
    draw.text((x, y), facts, font=_font(26), fill=TEXT_RGB)
    y += 38
    provenance = (
        f"Model: {model.get('name', 'unknown')}"
        + (f" (sha256 {sha})" if sha else "")
        + f"    Backend: {backend}"
        + (f" ({precision})" if precision else "")
        + f"    Date: {stamp.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC"
    )
    draw.text((x, y), provenance, font=_font(18), fill=MUTED_RGB)
    y += 32
    draw.text((x, y), DISCLAIMER, font=_font(22), fill=WARN_RGB)
    draw.rectangle((legend_x, MARGIN + 62, legend_x + 28, MARGIN + 76), outline=OUTLINE_RGB, width=OUTLINE_PX)
    draw.text((legend_x + 40, MARGIN + 58), "lesion mask outline", font=_font(18), fill=TEXT_RGB)
    if brain.get("source"):
        draw.rectangle(
            (legend_x, MARGIN + 88, legend_x + 28, MARGIN + 102), outline=BRAIN_RGB, width=OUTLINE_PX
        )
        draw.text(
            (legend_x + 40, MARGIN + 84),
            f"brain mask outline ({brain['source']})",
            font=_font(18),
            fill=TEXT_RGB,
        )
    else:  # why there is none, in at most two short lines
        reason = textwrap.wrap(f"no brain mask: {brain.get('reason') or 'not in the report'}", 40)[:2]
        draw.multiline_text((legend_x, MARGIN + 84), "\n".join(reason), font=_font(14), fill=MUTED_RGB)
    draw.text((legend_x, MARGIN + 126), "Radiological view:", font=_font(18), fill=TEXT_RGB)
    draw.text((legend_x, MARGIN + 150), "R = patient right (image left)", font=_font(18), fill=MUTED_RGB)
    rule_y = HEADER_HEIGHT - 18
    draw.line((MARGIN, rule_y, PAGE_SIZE[0] - MARGIN, rule_y), fill=(60, 60, 66))


def qc_montage(
    image: nib.spatialimages.SpatialImage,
    mask: nib.spatialimages.SpatialImage | np.ndarray,
    report: Mapping[str, Any],
    path: str | Path,
    brain: nib.spatialimages.SpatialImage | np.ndarray | None = None,
) -> None:
    """Write the QC page for ``image`` (any orientation) and its lesion ``mask`` to ``path``, atomically.

    ``mask`` (and ``brain``, the brain mask, outlined in BRAIN_RGB) is a NIfTI image on the image's grid
    or an array in the image's voxel order; ``report`` is the dict of :mod:`mhunet_deploy.report`
    (lesion count, total volume, brain entry, model, backend, date).
    """
    data, labels, zooms, affine = _to_canonical(image, mask)
    brain_c = None if brain is None else _canonical_mask(image, brain)
    centre = np.array([data.shape[0] / 2, data.shape[1] / 2, 0.0, 1.0])
    cols, rows = GRID
    slices = choose_slices(data, labels, cols * rows)
    window = _window(data)
    crop = _crop_to_head(data, labels if brain_c is None else labels | brain_c, zooms)
    data, labels = data[crop], labels[crop]
    brain_c = None if brain_c is None else brain_c[crop]
    page = Image.new("RGB", PAGE_SIZE, BACKGROUND_RGB)
    draw = ImageDraw.Draw(page)
    source = str((report.get("input") or {}).get("path") or image.get_filename() or "in-memory image")
    _header(draw, report, source)
    cell_w = (PAGE_SIZE[0] - 2 * MARGIN - (cols - 1) * GAP) // cols
    cell_h = (PAGE_SIZE[1] - HEADER_HEIGHT - FOOTER_HEIGHT - MARGIN - (rows - 1) * GAP) // rows
    label_font, marker_font = _font(15), _font(17)
    for n, k in enumerate(slices):
        left = MARGIN + (n % cols) * (cell_w + GAP)
        top = HEADER_HEIGHT + (n // cols) * (cell_h + GAP)
        tile = render_axial(data, labels, k, zooms, window, (cell_w, cell_h - 22), brain_c)
        tile_left = left + (cell_w - tile.width) // 2
        tile_top = top + 22 + (cell_h - 22 - tile.height) // 2
        page.paste(tile, (tile_left, tile_top))
        z_mm = float((affine @ (centre + [0, 0, k, 0]))[2])
        n_lesion = int(labels[:, :, k].sum())
        caption = f"z = {z_mm:+.1f} mm" + (f"    lesion voxels: {n_lesion}" if n_lesion else "")
        draw.text((left + 2, top), caption, font=label_font, fill=MUTED_RGB)
        mid = tile_top + tile.height // 2
        draw.text((tile_left + 4, mid), "R", font=marker_font, fill=TEXT_RGB, anchor="lm")
        draw.text((tile_left + tile.width - 4, mid), "L", font=marker_font, fill=TEXT_RGB, anchor="rm")
    footer = (
        f"Axial slices, radiological convention (patient right on image left, anterior up); "
        f"voxel {zooms[0]:.2g} x {zooms[1]:.2g} x {zooms[2]:.2g} mm, shown at true aspect.  "
        f"{DISCLAIMER}."
    )
    draw.text((MARGIN, PAGE_SIZE[1] - FOOTER_HEIGHT + 10), footer, font=_font(15), fill=MUTED_RGB)
    atomic_write(path, lambda tmp: page.save(tmp, format="PNG", dpi=(DPI, DPI)))
