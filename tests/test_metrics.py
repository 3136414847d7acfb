"""Metrics on hand-computed cases: every expected number below is worked out in the comments."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from mhunet_deploy.errors import InputError
from mhunet_deploy.metrics import (
    brain_metrics,
    compute_metrics,
    dice,
    evaluate,
    hd95,
    iou,
    lesion_detection,
    sensitivity,
    specificity,
    volume_ml,
)

SHAPE = (10, 10, 10)


def cube(offset: tuple[int, int, int], size: int = 4, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    x, y, z = offset
    mask[x : x + size, y : y + size, z : z + size] = True
    return mask


def test_overlapping_cubes() -> None:
    # 4^3 cubes shifted by 2 along x: TP = 2*4*4 = 32, FP = FN = 32, TN = 1000 - 96 = 904.
    truth, pred = cube((2, 2, 2)), cube((4, 2, 2))
    assert dice(pred, truth) == pytest.approx(2 * 32 / (2 * 32 + 64))
    assert iou(pred, truth) == pytest.approx(32 / 96)
    assert sensitivity(pred, truth) == pytest.approx(0.5)
    assert specificity(pred, truth) == pytest.approx(904 / 936)
    m = compute_metrics(pred, truth, (1.0, 1.0, 3.0))
    # 64 voxels of 3 mm^3 = 192 mm^3 = 0.192 mL each.
    assert m["pred_volume_ml"] == pytest.approx(0.192)
    assert m["truth_volume_ml"] == pytest.approx(0.192)
    assert m["volume_error_ml"] == pytest.approx(0.0)
    assert (m["tp_voxels"], m["fp_voxels"], m["fn_voxels"], m["tn_voxels"]) == (32, 32, 32, 904)


def test_volume_error_is_signed_pred_minus_truth() -> None:
    # 8 predicted voxels vs 64 reference voxels of 2 mm^3: (8 - 64) * 2 / 1000 mL.
    m = compute_metrics(cube((2, 2, 2), size=2), cube((2, 2, 2)), (1.0, 1.0, 2.0))
    assert m["volume_error_ml"] == pytest.approx(-0.112)
    assert volume_ml(cube((0, 0, 0), size=2), (0.5, 0.5, 4.0)) == pytest.approx(8 * 1.0 / 1000)


def sheet(axis: int, index: int, shape: tuple[int, ...] = (12, 12, 12)) -> np.ndarray:
    """A one-voxel-thick 6x6 square perpendicular to ``axis``: every voxel is a surface voxel."""
    mask = np.zeros(shape, dtype=bool)
    box = [slice(3, 9)] * 3
    box[axis] = slice(index, index + 1)
    mask[tuple(box)] = True
    return mask


@pytest.mark.parametrize(
    ("axis", "expected_mm"),
    [
        # Parallel sheets 2 voxels apart: each voxel's nearest counterpart is straight across, so
        # every directed distance is 2 voxels x the zoom of that axis.
        (0, 2.0),
        (1, 2.0),
        (2, 6.0),
    ],
)
def test_hd95_anisotropic_spacing(axis: int, expected_mm: float) -> None:
    zooms = (1.0, 1.0, 3.0)
    assert hd95(sheet(axis, 4), sheet(axis, 2), zooms) == pytest.approx(expected_mm)


def test_hd95_takes_the_larger_directed_percentile() -> None:
    # pred = the reference voxel + one voxel 10 voxels away along z (3 mm): pred->truth distances are
    # {0, 30} mm, whose 95th percentile (linear interpolation) is 0.95 * 30 = 28.5; truth->pred is {0}.
    truth = np.zeros((5, 5, 20), dtype=bool)
    truth[2, 2, 3] = True
    pred = truth.copy()
    pred[2, 2, 13] = True
    assert hd95(pred, truth, (1.0, 1.0, 3.0)) == pytest.approx(28.5)
    assert hd95(truth, pred, (1.0, 1.0, 3.0)) == pytest.approx(28.5)


def _brute_hd95(pred: np.ndarray, truth: np.ndarray, zooms: tuple[float, ...]) -> float:
    """Reference: surfaces by a min filter over a zero-padded mask, distances between all pairs."""

    def surface_points(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, 1)
        eroded = ndimage.minimum_filter(padded.astype(np.uint8), size=3)[1:-1, 1:-1, 1:-1] > 0
        return np.argwhere(mask & ~eroded) * np.asarray(zooms)

    d = cdist(surface_points(pred), surface_points(truth))
    return float(max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95)))


def test_hd95_matches_all_pairs_reference_on_random_blobs() -> None:
    rng = np.random.default_rng(0)
    zooms = (0.8, 1.1, 2.5)
    for _ in range(5):
        pred = rng.random((14, 13, 9)) > 0.85
        truth = rng.random((14, 13, 9)) > 0.8
        pred[0, :, 0] = True  # touch the volume border: border voxels are surface voxels
        assert hd95(pred, truth, zooms) == pytest.approx(_brute_hd95(pred, truth, zooms))


def test_both_empty() -> None:
    empty = np.zeros(SHAPE, dtype=bool)
    m = compute_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert (m["dsc"], m["iou"], m["hd95_mm"], m["lesion_f1"]) == (1.0, 1.0, 0.0, 1.0)
    assert (m["sensitivity"], m["specificity"]) == (1.0, 1.0)
    assert m["pred_volume_ml"] == m["truth_volume_ml"] == 0.0


@pytest.mark.parametrize("empty_side", ["pred", "truth"])
def test_one_empty(empty_side: str) -> None:
    empty, full = np.zeros(SHAPE, dtype=bool), cube((2, 2, 2))
    pred, truth = (empty, full) if empty_side == "pred" else (full, empty)
    m = compute_metrics(pred, truth, (1.0, 1.0, 1.0))
    assert m["dsc"] == 0.0
    assert m["iou"] == 0.0
    assert isinstance(m["hd95_mm"], float)
    assert math.isinf(m["hd95_mm"])
    assert m["lesion_f1"] == 0.0
    # Recall is vacuously 1 with no truth lesion, precision vacuously 1 with no predicted lesion.
    if empty_side == "pred":
        assert (m["lesion_precision"], m["lesion_recall"], m["sensitivity"]) == (1.0, 0.0, 0.0)
    else:
        assert (m["lesion_precision"], m["lesion_recall"], m["sensitivity"]) == (0.0, 1.0, 1.0)


def lesion_scene() -> tuple[np.ndarray, np.ndarray]:
    """Two truth lesions and four predicted components, all on rows 2 voxels apart (no 26-contact).

    truth A: x 0..7 on row y=1 (8 voxels)        pred A1: x 0..1 (2 voxels) -> IoU 2/8 = 0.25
                                                 pred A2: x 4..7 (4 voxels) -> IoU 4/8 = 0.5
    truth B: x 0..4 on row y=4 (5 voxels)        pred B1: x 2 (1 voxel)      -> IoU 1/5 = 0.2 (miss)
    nothing on row y=7                           pred FP: x 3..5 (3 voxels)  -> no overlap
    """
    truth = np.zeros((10, 9, 3), dtype=bool)
    pred = np.zeros_like(truth)
    truth[0:8, 1, 1] = True
    pred[0:2, 1, 1] = True
    pred[4:8, 1, 1] = True
    truth[0:5, 4, 1] = True
    pred[2, 4, 1] = True
    pred[3:6, 7, 1] = True
    return pred, truth


def test_lesion_detection_split_missed_and_false_positive() -> None:
    pred, truth = lesion_scene()
    r = lesion_detection(pred, truth)  # IoU 0.25 is the default and equality matches
    assert (r["truth_lesions"], r["pred_lesions"]) == (2, 4)
    # A detected (by both pieces), B missed; A1 and A2 match, B1 and FP do not.
    assert (r["detected_lesions"], r["matched_pred_lesions"]) == (1, 2)
    assert r["lesion_recall"] == pytest.approx(0.5)
    assert r["lesion_precision"] == pytest.approx(0.5)
    assert r["lesion_f1"] == pytest.approx(0.5)


def test_lesion_detection_overlap_rule_counts_any_shared_voxel() -> None:
    """MSSEG/ISBI rule on the same scene: B1 (IoU 0.2) now finds B; FP still overlaps nothing.
    Recall 2/2, precision 3/4 (A1, A2, B1), F1 = 2 * (3/4) / (7/4) = 6/7; the IoU rule is unchanged."""
    pred, truth = lesion_scene()
    r = lesion_detection(pred, truth)
    assert (r["detected_lesions_overlap"], r["matched_pred_lesions_overlap"]) == (2, 3)
    assert r["lesion_recall_overlap"] == 1.0 and r["lesion_precision_overlap"] == pytest.approx(0.75)
    assert r["lesion_f1_overlap"] == pytest.approx(6 / 7) and r["lesion_f1"] == pytest.approx(0.5)
    assert compute_metrics(pred, truth, (1.0, 1.0, 1.0))["lesion_f1_overlap"] == pytest.approx(6 / 7)


@pytest.mark.parametrize(
    "pred_empty, truth_empty, f1", [(True, True, 1.0), (True, False, 0.0), (False, True, 0.0)]
)
def test_overlap_rule_keeps_the_empty_rules(pred_empty: bool, truth_empty: bool, f1: float) -> None:
    full, empty = cube((2, 2, 2)), np.zeros(SHAPE, dtype=bool)
    m = compute_metrics(empty if pred_empty else full, empty if truth_empty else full, (1.0, 1.0, 1.0))
    assert m["lesion_f1_overlap"] == m["lesion_f1"] == f1
    assert m["lesion_precision_overlap"] == m["lesion_precision"]
    assert m["lesion_recall_overlap"] == m["lesion_recall"]


def test_lesion_detection_just_above_the_boundary() -> None:
    pred, truth = lesion_scene()
    r = lesion_detection(pred, truth, iou_threshold=0.26)
    # A1 (IoU 0.25) now misses: precision 1/4, recall 1/2, F1 = 2 * (1/8) / (3/4) = 1/3.
    assert r["matched_pred_lesions"] == 1
    assert r["lesion_precision"] == pytest.approx(0.25)
    assert r["lesion_recall"] == pytest.approx(0.5)
    assert r["lesion_f1"] == pytest.approx(1 / 3)


def test_lesion_detection_uses_26_connectivity() -> None:
    # Two voxels touching only at a corner are one lesion.
    truth = np.zeros((4, 4, 4), dtype=bool)
    truth[1, 1, 1] = truth[2, 2, 2] = True
    assert lesion_detection(truth, truth)["truth_lesions"] == 1


def test_lesion_detection_rejects_bad_threshold() -> None:
    pred, truth = lesion_scene()
    with pytest.raises(ValueError, match="iou_threshold"):
        lesion_detection(pred, truth, iou_threshold=0.0)


def save(path, data: np.ndarray, affine: np.ndarray | None = None, zooms=(1.0, 1.0, 3.0)) -> str:
    affine = np.diag([*zooms, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def test_evaluate_probability_map_and_label_reference(tmp_path) -> None:
    truth = cube((2, 2, 2)).astype(np.uint8) * 3  # label values > 0 count as lesion
    prob = np.where(cube((4, 2, 2)), 0.7, 0.2).astype(np.float32)
    prob[0, 0, 0] = 0.5  # exactly at the threshold: not lesion (pred > threshold)
    r = evaluate(save(tmp_path / "p.nii.gz", prob), save(tmp_path / "t.nii.gz", truth))
    assert r["dsc"] == pytest.approx(0.5)
    assert r["zooms"] == [1.0, 1.0, 3.0]
    assert r["pred_binarised"] == "> 0.5"
    assert r["truth_volume_ml"] == pytest.approx(0.192)
    r = evaluate(tmp_path / "p.nii.gz", tmp_path / "t.nii.gz", threshold=0.1)
    assert r["pred_volume_ml"] == pytest.approx(1000 * 3 / 1000)


def test_evaluate_integer_mask_uses_nonzero(tmp_path) -> None:
    pred = cube((2, 2, 2)).astype(np.uint8)
    r = evaluate(save(tmp_path / "p.nii.gz", pred), save(tmp_path / "t.nii.gz", pred), threshold=5)
    assert (r["dsc"], r["pred_binarised"]) == (1.0, "> 0")


def test_evaluate_shape_mismatch_is_a_one_line_input_error(tmp_path) -> None:
    p = save(tmp_path / "p.nii.gz", np.zeros((10, 10, 10), np.uint8))
    t = save(tmp_path / "t.nii.gz", np.zeros((10, 10, 9), np.uint8))
    with pytest.raises(InputError, match=r"shape \(10, 10, 10\) differs") as info:
        evaluate(p, t)
    assert "\n" not in str(info.value)


def test_evaluate_affine_tolerance(tmp_path) -> None:
    data = cube((2, 2, 2)).astype(np.uint8)
    base = np.diag([1.0, 1.0, 3.0, 1.0])
    t = save(tmp_path / "t.nii.gz", data, base)
    nudged = base.copy()
    nudged[0, 3] += 1e-5  # float32 round-off: same grid
    assert evaluate(save(tmp_path / "p.nii.gz", data, nudged), t)["dsc"] == 1.0
    shifted = base.copy()
    shifted[0, 3] += 1.0  # a real 1 mm shift
    with pytest.raises(InputError, match="affines differ"):
        evaluate(save(tmp_path / "q.nii.gz", data, shifted), t)


def test_brain_metrics_dice_volumes_and_lesions_outside() -> None:
    truth = cube((2, 2, 2))  # 64 voxels
    pred = cube((3, 2, 2))  # 48 shared
    lesions = np.zeros(SHAPE, dtype=bool)
    lesions[2, 2, 2] = lesions[7, 7, 7] = lesions[9, 9, 9] = True  # one inside the reference brain
    m = brain_metrics(pred, truth, lesions, (1.0, 1.0, 2.0))
    assert m["brain_dsc"] == pytest.approx(2 * 48 / 128)
    assert m["pred_brain_volume_ml"] == m["truth_brain_volume_ml"] == pytest.approx(0.128)
    assert m["lesion_voxels_outside_brain"] == 2


def test_evaluate_brain_truth_finds_the_brain_mask_beside_the_lesion_mask(tmp_path) -> None:
    lesion = cube((3, 3, 3), size=2).astype(np.uint8)
    p = save(tmp_path / "scan_mask.nii.gz", lesion)
    t = save(tmp_path / "truth.nii.gz", lesion)
    save(tmp_path / "scan_brain.nii.gz", cube((2, 2, 2)).astype(np.uint8))
    bt = save(tmp_path / "brain_truth.nii.gz", cube((2, 2, 2), size=5).astype(np.uint8))
    r = evaluate(p, t, brain_truth_path=bt)
    assert r["brain_pred_path"] == str(tmp_path / "scan_brain.nii.gz")
    assert r["brain_dsc"] == pytest.approx(2 * 64 / (64 + 125)) and r["lesion_voxels_outside_brain"] == 0
    assert r["dsc"] == 1.0 and "brain_dsc" not in evaluate(p, t)
    other = save(tmp_path / "mine.nii.gz", cube((2, 2, 2), size=5).astype(np.uint8))
    assert evaluate(p, t, brain_truth_path=bt, brain_pred_path=other)["brain_dsc"] == 1.0
    with pytest.raises(InputError, match="reference brain mask shape"):
        evaluate(p, t, brain_truth_path=save(tmp_path / "small.nii.gz", np.ones((4, 4, 4), np.uint8)))
    with pytest.raises(InputError, match="not named like an mhunet infer output"):
        evaluate(t, t, brain_truth_path=bt)


def test_evaluate_missing_file(tmp_path) -> None:
    t = save(tmp_path / "t.nii.gz", cube((2, 2, 2)).astype(np.uint8))
    with pytest.raises(InputError, match="not found"):
        evaluate(tmp_path / "nope.nii.gz", t)
