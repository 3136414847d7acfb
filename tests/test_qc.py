"""QC montage: page size, outlines where the mask is, radiological orientation from any input orientation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mhunet_deploy.errors import InputError
from mhunet_deploy.qc import (
    BRAIN_RGB,
    GRID,
    HEADER_HEIGHT,
    OUTLINE_RGB,
    PAGE_SIZE,
    choose_slices,
    qc_montage,
    render_axial,
)

SHAPE = (40, 48, 12)
ZOOMS = (1.0, 1.0, 3.0)
REPORT = {
    "lesion_count": 1,
    "total_volume_ml": 0.123,
    "model": {"name": "light", "sha256": "ab" * 32},
    "backend": "onnxruntime",
    "precision": "fp32",
    "created": "2025-01-02T03:04:05+00:00",
    "input": {"path": "/data/scan.nii.gz"},
}


def head() -> np.ndarray:
    """An ellipsoidal 'brain' of intensity ~100 on a zero background (RAS voxel order)."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    inside = (x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.9) ** 2 <= 1
    rng = np.random.default_rng(0)
    return np.where(inside, 100 + 5 * rng.standard_normal(SHAPE), 0).astype(np.float32)


def right_anterior_lesion() -> np.ndarray:
    """A block on the patient's right (high x in RAS) and anterior (high y) in slices 5..7."""
    mask = np.zeros(SHAPE, dtype=bool)
    mask[26:32, 30:36, 5:8] = True
    return mask


def ras_image(data: np.ndarray) -> nib.Nifti1Image:
    return nib.Nifti1Image(data, np.diag([*ZOOMS, 1.0]))


def outline_pixels(rgb: np.ndarray) -> np.ndarray:
    return np.all(rgb == OUTLINE_RGB, axis=-1)


def test_montage_png_size_and_outline(tmp_path) -> None:
    path = tmp_path / "qc.png"
    qc_montage(ras_image(head()), right_anterior_lesion(), REPORT, path)
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == PAGE_SIZE
        rgb = np.asarray(im.convert("RGB"))
    assert outline_pixels(rgb[HEADER_HEIGHT:]).sum() > 50
    assert [p.name for p in tmp_path.iterdir()] == ["qc.png"]  # written atomically, nothing left over


def test_montage_without_lesions_has_no_outline(tmp_path) -> None:
    path = tmp_path / "qc.png"
    qc_montage(ras_image(head()), np.zeros(SHAPE, bool), {**REPORT, "lesion_count": 0}, path)
    rgb = np.asarray(Image.open(path).convert("RGB"))
    assert outline_pixels(rgb[HEADER_HEIGHT:]).sum() == 0


def test_tile_is_radiological_with_true_aspect() -> None:
    tile = render_axial(head(), right_anterior_lesion(), 6, ZOOMS, (0.0, 120.0), (400, 400))
    rgb = np.asarray(tile)
    # 40 x 48 voxels of 1 x 1 mm fill a 400 x 400 box as 333 x 400 (width x height).
    assert tile.size == (333, 400)
    rows, cols = np.nonzero(outline_pixels(rgb))
    assert rows.size
    assert cols.max() < tile.width / 2  # patient right -> image left (radiological)
    assert rows.max() < tile.height / 2  # anterior -> top
    # Outline, not fill: the lesion's centre stays grey.
    centre = rgb[(rows.min() + rows.max()) // 2, (cols.min() + cols.max()) // 2]
    assert centre[0] == centre[1] == centre[2]


def test_anisotropic_in_plane_aspect() -> None:
    tile = render_axial(head(), right_anterior_lesion(), 6, (2.0, 1.0, 3.0), (0.0, 120.0), (400, 400))
    assert tile.size == (400, 240)  # 80 mm wide x 48 mm high


def test_any_orientation_gives_the_same_page(tmp_path) -> None:
    data, mask = head(), right_anterior_lesion()
    qc_montage(ras_image(data), mask, REPORT, tmp_path / "ras.png")
    # The same physical volume stored LAS (x axis flipped): voxel i holds RAS voxel 39 - i.
    las_affine = np.diag([-ZOOMS[0], ZOOMS[1], ZOOMS[2], 1.0])
    las_affine[0, 3] = (SHAPE[0] - 1) * ZOOMS[0]
    las = nib.Nifti1Image(data[::-1].copy(), las_affine)
    las_mask = nib.Nifti1Image(mask[::-1].astype(np.uint8), las_affine)
    qc_montage(las, las_mask, REPORT, tmp_path / "las.png")
    a = np.asarray(Image.open(tmp_path / "ras.png"))
    b = np.asarray(Image.open(tmp_path / "las.png"))
    assert np.array_equal(a, b)


def test_choose_slices_covers_brain_and_hits_the_lesion() -> None:
    mask = right_anterior_lesion()  # 36 lesion voxels in each of slices 5, 6, 7
    mask[26:30, 30:36, 6] = False  # slice 6 now has 12
    # The head spans slices 1..10 (0 and 11 lie outside it); 4 slabs: 1-3, 4-6, 7-8, 9-10. Slabs with a
    # lesion give their largest-lesion slice (5, then 7: the first of a tie), the others their middle.
    assert choose_slices(head(), mask, 4) == [2, 5, 7, 10]
    # More slabs than slices: every brain slice once.
    assert choose_slices(head(), mask, GRID[0] * GRID[1]) == list(range(1, 11))


def test_brain_outlined_in_its_own_colour_and_named_in_the_header(tmp_path) -> None:
    brain = head() > 0
    report = {**REPORT, "brain": {"source": "model", "volume_ml": 12.3, "reason": None}}
    qc_montage(ras_image(head()), right_anterior_lesion(), report, tmp_path / "qc.png", brain)
    rgb = np.asarray(Image.open(tmp_path / "qc.png").convert("RGB"))
    brain_px = np.all(rgb == BRAIN_RGB, axis=-1)
    assert brain_px[HEADER_HEIGHT:].sum() > 500 and outline_pixels(rgb[HEADER_HEIGHT:]).sum() > 50
    assert brain_px[:HEADER_HEIGHT].any()  # the legend's brain swatch
    # The lesion outline is drawn over the brain's: the lesion tiles show both colours, none mixed.
    tile = np.asarray(
        render_axial(head(), right_anterior_lesion(), 6, ZOOMS, (0.0, 120.0), (400, 400), brain)
    )
    assert outline_pixels(tile).sum() > 20 and np.all(tile == BRAIN_RGB, axis=-1).sum() > 100
    no_brain = {**REPORT, "brain": {"source": None, "volume_ml": None, "reason": "turned off"}}
    qc_montage(ras_image(head()), right_anterior_lesion(), no_brain, tmp_path / "none.png")
    rgb = np.asarray(Image.open(tmp_path / "none.png").convert("RGB"))
    assert not np.all(rgb == BRAIN_RGB, axis=-1).any()


def test_mask_on_another_grid_is_refused(tmp_path) -> None:
    with pytest.raises(InputError, match="does not match"):
        qc_montage(ras_image(head()), np.zeros((4, 4, 4), bool), REPORT, tmp_path / "qc.png")
