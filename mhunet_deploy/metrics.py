"""Segmentation metrics for binary 3D lesion masks, in physical units (ARCHITECTURE.md, Metrics).

Definitions (``pred`` = prediction, ``truth`` = reference; TP/FP/FN/TN are voxel counts):

- DSC = 2 TP / (2 TP + FP + FN); IoU = TP / (TP + FP + FN); both are 1 when both masks are empty.
- sensitivity = TP / (TP + FN); specificity = TN / (TN + FP). An empty denominator (no positive, or
  no negative voxel in ``truth``) means there was nothing to miss, so the value is 1.
- HD95 (mm): surface voxels are ``mask & ~binary_erosion(mask, 3x3x3 ones)`` (voxels on the volume
  border count as surface). For every surface voxel of one mask, the distance in mm to the nearest
  surface voxel of the other comes from ``distance_transform_edt(sampling=zooms)``; HD95 is the larger
  of the two directed 95th percentiles (numpy's default linear interpolation), as in MONAI, not the
  percentile of the pooled distances (MedPy). Both empty -> 0.0; exactly one empty -> ``math.inf``.
- Lesions are connected components with 26-connectivity. A predicted component and a truth lesion
  match when they overlap with IoU = |p & t| / |p | t| >= ``iou_threshold`` (default 0.25; equality
  matches). Matching is not one-to-one: lesion recall = fraction of truth lesions matched by at least
  one predicted component; lesion precision = fraction of predicted components that match at least one
  truth lesion; lesion F1 = 2 P R / (P + R), 0 when P + R = 0. With no predicted component P = 1 and
  with no truth lesion R = 1 (nothing to be wrong about), so both empty -> F1 = 1 and exactly one
  empty -> F1 = 0. A lesion split into pieces is detected if any piece reaches the threshold; pieces
  that reach it are true positives, pieces that do not are false positives.
- The same counts under the MSSEG/ISBI overlap rule, keys ending ``_overlap``: a truth lesion is found
  if any predicted voxel lies in it, a predicted lesion is correct if it shares a voxel with any truth
  lesion (IoU > 0); same empty rules.
- Brain mask (``evaluate(..., brain_truth_path=...)``): Dice of the predicted brain mask against the
  reference one, both volumes in mL, and the predicted lesion voxels outside the reference brain.
- Volumes in mL (voxel count x product of zooms / 1000); volume error = pred - truth (signed, mL).

All values are Python floats/ints; the only non-finite value ever produced is HD95 = inf (how reports
write it to JSON is documented in :mod:`mhunet_deploy.report`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from mhunet_deploy.errors import InputError

DEFAULT_IOU_THRESHOLD = 0.25
#: Affines may differ by float32 round-off after a save/load cycle, never by a real shift (mm).
AFFINE_ATOL_MM = 1e-3
_SURFACE_STRUCTURE = np.ones((3, 3, 3), dtype=bool)
_CONNECTIVITY_26 = ndimage.generate_binary_structure(3, 3)


def _counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    """TP, FP, FN, TN voxel counts."""
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    return tp, fp, fn, truth.size - tp - fp - fn


def _ratio(num: int, den: int) -> float:
    """num / den, with 1.0 for an empty denominator (the empty rules of the module docstring)."""
    return num / den if den else 1.0


def _voxel_scores(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """DSC, IoU, sensitivity and specificity from the voxel counts (one formula for each)."""
    return {
        "dsc": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
    }


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice similarity coefficient; 1.0 when both masks are empty."""
    return _voxel_scores(*_counts(pred, truth))["dsc"]


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union (Jaccard); 1.0 when both masks are empty."""
    return _voxel_scores(*_counts(pred, truth))["iou"]


def sensitivity(pred: np.ndarray, truth: np.ndarray) -> float:
    """Voxel true-positive rate; 1.0 when ``truth`` has no positive voxel."""
    return _voxel_scores(*_counts(pred, truth))["sensitivity"]


def specificity(pred: np.ndarray, truth: np.ndarray) -> float:
    """Voxel true-negative rate; 1.0 when ``truth`` has no negative voxel."""
    return _voxel_scores(*_counts(pred, truth))["specificity"]


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a background voxel (or the volume border) among their 26 neighbours."""
    return mask & ~ndimage.binary_erosion(mask, structure=_SURFACE_STRUCTURE)


def hd95(pred: np.ndarray, truth: np.ndarray, zooms: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm; 0.0 if both masks are empty, inf if one is."""
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not (has_pred or has_truth):
        return 0.0
    if not (has_pred and has_truth):
        return math.inf
    # Every surface voxel lies inside the union's bounding box, so cropping to it keeps the distances
    # exact (erosion treats outside-the-crop as background, which it is) and saves most of the EDT.
    (box,) = ndimage.find_objects((pred | truth).astype(np.uint8))
    surf_p, surf_t = _surface(pred[box]), _surface(truth[box])
    sampling = tuple(float(z) for z in zooms)
    to_truth = ndimage.distance_transform_edt(~surf_t, sampling=sampling)[surf_p]
    to_pred = ndimage.distance_transform_edt(~surf_p, sampling=sampling)[surf_t]
    return float(max(np.percentile(to_truth, 95), np.percentile(to_pred, 95)))


def _lesion_pairs(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """Truth and predicted lesion counts, and every overlapping (truth id, pred id) pair with its IoU."""
    t_lab, n_truth = ndimage.label(truth, structure=_CONNECTIVITY_26)
    p_lab, n_pred = ndimage.label(pred, structure=_CONNECTIVITY_26)
    t_size = np.bincount(t_lab.ravel(), minlength=n_truth + 1)
    p_size = np.bincount(p_lab.ravel(), minlength=n_pred + 1)
    both = (t_lab > 0) & (p_lab > 0)
    pair_codes, inter = np.unique(
        t_lab[both].astype(np.int64) * (n_pred + 1) + p_lab[both], return_counts=True
    )
    t_id, p_id = np.divmod(pair_codes, n_pred + 1)
    return int(n_truth), int(n_pred), t_id, p_id, inter / (t_size[t_id] + p_size[p_id] - inter)


def _detection(pairs: tuple, iou_threshold: float, suffix: str = "") -> dict[str, float | int]:
    """Lesion-wise precision, recall and F1 of ``_lesion_pairs`` output: pairs with IoU >= the
    threshold match (0: every overlapping pair, the overlap rule)."""
    n_truth, n_pred, t_id, p_id, pair_iou = pairs
    hit = pair_iou >= iou_threshold
    detected = int(np.unique(t_id[hit]).size)
    matched_pred = int(np.unique(p_id[hit]).size)
    precision = _ratio(matched_pred, n_pred)
    recall = _ratio(detected, n_truth)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        f"detected_lesions{suffix}": detected,
        f"matched_pred_lesions{suffix}": matched_pred,
        f"lesion_precision{suffix}": precision,
        f"lesion_recall{suffix}": recall,
        f"lesion_f1{suffix}": f1,
    }


def lesion_detection(
    pred: np.ndarray, truth: np.ndarray, iou_threshold: float = DEFAULT_IOU_THRESHOLD
) -> dict[str, float | int]:
    """Lesion-wise precision, recall and F1 under the IoU rule and the overlap rule (``*_overlap``) of
    the module docstring, from one labelling."""
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    pairs = _lesion_pairs(pred, truth)
    return {
        "truth_lesions": pairs[0],
        "pred_lesions": pairs[1],
        **_detection(pairs, iou_threshold),
        "iou_threshold": float(iou_threshold),
        **_detection(pairs, 0.0, "_overlap"),
    }


def volume_ml(mask: np.ndarray, zooms: Sequence[float]) -> float:
    """Mask volume in mL (1 mL = 1000 mm^3)."""
    return int(np.count_nonzero(mask)) * float(np.prod(np.asarray(zooms, dtype=np.float64))) / 1000.0


def compute_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    zooms: Sequence[float],
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> dict[str, Any]:
    """Every metric of this module for two boolean masks on the same voxel grid."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"need two 3D masks of one shape, got {pred.shape} and {truth.shape}")
    if len(zooms) != 3:
        raise ValueError(f"need 3 zooms, got {tuple(zooms)}")
    tp, fp, fn, tn = _counts(pred, truth)
    pred_ml, truth_ml = volume_ml(pred, zooms), volume_ml(truth, zooms)
    return {
        **_voxel_scores(tp, fp, fn, tn),
        "hd95_mm": hd95(pred, truth, zooms),
        **lesion_detection(pred, truth, iou_threshold),
        "pred_volume_ml": pred_ml,
        "truth_volume_ml": truth_ml,
        "volume_error_ml": pred_ml - truth_ml,
        "tp_voxels": tp,
        "fp_voxels": fp,
        "fn_voxels": fn,
        "tn_voxels": tn,
    }


def _load(path: str | Path, role: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Data (3D; a trailing singleton 4th axis is dropped), affine and zooms, or an InputError."""
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except FileNotFoundError:
        raise InputError(f"{role} file not found: {path}") from None
    except Exception as exc:  # nibabel raises many types for unreadable or truncated files
        raise InputError(f"cannot read {role} {path} as NIfTI: {exc}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{role} {path} must be a 3D volume, got shape {data.shape}")
    # voxel sizes from the affine, as `mhunet infer` measures lesions (io.nifti.Volume.zooms)
    zooms = tuple(float(z) for z in np.linalg.norm(img.affine[:3, :3], axis=0))
    return data, img.affine, zooms


def brain_metrics(
    pred_brain: np.ndarray, truth_brain: np.ndarray, lesions: np.ndarray, zooms: Sequence[float]
) -> dict[str, Any]:
    """Brain-mask Dice, both volumes, and the predicted lesion voxels outside the reference brain."""
    pred_brain, truth_brain = np.asarray(pred_brain, bool), np.asarray(truth_brain, bool)
    return {
        "brain_dsc": dice(pred_brain, truth_brain),
        "pred_brain_volume_ml": volume_ml(pred_brain, zooms),
        "truth_brain_volume_ml": volume_ml(truth_brain, zooms),
        "lesion_voxels_outside_brain": int(np.count_nonzero(np.asarray(lesions, bool) & ~truth_brain)),
    }


def _same_grid(
    what: str, data: np.ndarray, affine: np.ndarray, ref: np.ndarray, ref_affine: np.ndarray
) -> None:
    """InputError unless ``data`` lies on the reference's voxel grid (shape, affine within AFFINE_ATOL_MM)."""
    if data.shape != ref.shape:
        raise InputError(
            f"{what} shape {data.shape} differs from reference shape {ref.shape}: "
            f"resample the {what} onto the reference grid first"
        )
    if not np.allclose(affine, ref_affine, rtol=0.0, atol=AFFINE_ATOL_MM):
        worst = float(np.abs(affine - ref_affine).max())
        raise InputError(
            f"{what} and reference affines differ (max abs difference {worst:.4g} > "
            f"{AFFINE_ATOL_MM}): they are not on the same voxel grid"
        )


def brain_path_beside(pred_path: str | Path) -> Path:
    """The ``<name>_brain.nii.gz`` that `mhunet infer` writes beside ``<name>_mask.nii.gz`` (or _prob)."""
    pred_path = Path(pred_path)
    for suffix in ("_mask.nii.gz", "_prob.nii.gz"):
        if pred_path.name.endswith(suffix):
            return pred_path.with_name(pred_path.name.removesuffix(suffix) + "_brain.nii.gz")
    raise InputError(
        f"{pred_path} is not named like an mhunet infer output (<name>_mask.nii.gz); "
        "give the predicted brain mask with --brain FILE"
    )


def evaluate(
    pred_path: str | Path,
    truth_path: str | Path,
    threshold: float = 0.5,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    brain_truth_path: str | Path | None = None,
    brain_pred_path: str | Path | None = None,
) -> dict[str, Any]:
    """Load a prediction and a reference NIfTI on one grid and return :func:`compute_metrics` and inputs.

    A floating-point prediction is read as a probability map (``> threshold``); an integer or boolean
    one as a mask or label map (``> 0``). The reference is always ``> 0``. Zooms come from the
    reference header. Raises :class:`InputError` when the files differ in shape or affine.
    With ``brain_truth_path`` (a reference brain mask, ``> 0``) also :func:`brain_metrics` of the
    predicted brain mask ``brain_pred_path`` (default: :func:`brain_path_beside` the prediction).
    """
    pred_data, pred_affine, _ = _load(pred_path, "prediction")
    truth_data, truth_affine, zooms = _load(truth_path, "reference")
    _same_grid("prediction", pred_data, pred_affine, truth_data, truth_affine)
    is_prob = np.issubdtype(pred_data.dtype, np.floating)
    pred = pred_data > threshold if is_prob else pred_data > 0
    metrics = compute_metrics(pred, truth_data > 0, zooms, iou_threshold)
    brain: dict[str, Any] = {}
    if brain_truth_path is not None:
        brain_pred_path = Path(brain_pred_path) if brain_pred_path else brain_path_beside(pred_path)
        pred_brain, pred_brain_affine, _ = _load(brain_pred_path, "predicted brain mask")
        truth_brain, truth_brain_affine, _ = _load(brain_truth_path, "reference brain mask")
        _same_grid("predicted brain mask", pred_brain, pred_brain_affine, truth_data, truth_affine)
        _same_grid("reference brain mask", truth_brain, truth_brain_affine, truth_data, truth_affine)
        brain = {
            "brain_pred_path": str(brain_pred_path),
            "brain_truth_path": str(brain_truth_path),
            **brain_metrics(pred_brain > 0, truth_brain > 0, pred, zooms),
        }
    return {
        "pred_path": str(pred_path),
        "truth_path": str(truth_path),
        "shape": list(truth_data.shape),
        "zooms": list(zooms),
        "pred_binarised": f"> {threshold}" if is_prob else "> 0",
        **metrics,
        **brain,
    }
