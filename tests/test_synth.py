"""Synthetic FLAIR generator: determinism, lesion/mask alignment, geometry, validation split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(
    not (DATA / "open_ms" / "lesion_masks_mni").is_dir(),
    reason=f"shared data not found at {DATA} (MNI152 template + open MS lesion masks)",
)
# 2 mm, skull off, thin slices, float32: small and fast, and a known contrast to test against
CONTRAST = dict(
    spacing=(2.0, 2.0),
    p_skull=0.0,
    p_thick=0.0,
    p_int16=0.0,
    p_mix=0.0,
    p_subset=0.0,
    lesion_contrast=(1.5, 1.5),
    bias=(0.0, 0.0),
)


@pytest.fixture(scope="module")
def source():
    from mhunet_deploy.synth import SynthSource

    return SynthSource.load(DATA)


def test_patient26_excluded_by_default(source) -> None:
    from mhunet_deploy.synth import SynthSource

    assert "patient26" not in source.subjects
    assert len(source.subjects) == 27
    assert SynthSource.load(DATA, subjects=["patient01", "patient02"]).subjects == ["patient01", "patient02"]


@pytest.fixture(scope="module")
def volume(source):
    from mhunet_deploy.synth import synth_volume

    return synth_volume(source, "patient05", 11, **CONTRAST)


def test_deterministic_by_seed(source, volume) -> None:
    from mhunet_deploy.synth import synth_volume

    a, am, _ = volume
    b, bm, _ = synth_volume(source, "patient05", 11, **CONTRAST)
    c, _, _ = synth_volume(source, "patient05", 12, **CONTRAST)
    assert np.array_equal(a.get_fdata(), b.get_fdata())
    assert np.array_equal(am.get_fdata(), bm.get_fdata())
    assert np.array_equal(a.affine, b.affine)
    assert a.shape != c.shape or not np.array_equal(a.get_fdata(), c.get_fdata())


def test_geometry_and_lesion_contrast(source, volume) -> None:
    img, mask, _ = volume
    data = img.get_fdata()
    les = np.asarray(mask.dataobj)
    assert mask.get_data_dtype() == np.uint8 and img.get_data_dtype() == np.float32
    assert np.array_equal(img.affine, mask.affine) and img.shape == mask.shape
    assert abs(np.linalg.det(img.affine[:3, :3])) > 1e-3
    assert np.isfinite(data).all()
    assert les.sum() > 50
    wm = (source.resample_to(source.wm, img) > 0.9) & (les == 0)
    ratio = data[les > 0].mean() / data[wm].mean()
    assert ratio > 1.2, ratio  # lesions drawn at 1.5x the mean brain intensity, WM ~ 1.0-1.1x


def test_brain_mask_holds_the_lesions_and_the_skull_lies_outside(source) -> None:
    from mhunet_deploy.synth import synth_volume

    img, mask, brain = synth_volume(source, "patient05", 3, p_skull=1.0, p_thick=0.0)
    data, les, b = img.get_fdata(), np.asarray(mask.dataobj), np.asarray(brain.dataobj)
    assert brain.get_data_dtype() == np.uint8 and np.array_equal(brain.affine, img.affine)
    assert (les[b == 0] > 0).sum() <= 0.01 * les.sum()  # lesions are painted inside the brain
    volume_ml = b.sum() * abs(np.linalg.det(img.affine[:3, :3])) / 1000
    assert 900 < volume_ml < 1900, volume_ml
    head = data > 0.05 * data.max()
    assert (head & (b == 0)).sum() > 0.1 * (head & (b > 0)).sum()  # scalp and skull signal outside
