"""postprocess: 26-connected lesions, sizes in mm3 at anisotropic zooms, table in world mm."""

from __future__ import annotations

import numpy as np
import pytest

from mhunet_deploy.postprocess import DEFAULT_MIN_LESION_MM3, DEFAULT_THRESHOLD, lesion_table, segment

ZOOMS = (0.5, 0.5, 3.0)  # 0.75 mm3 per voxel


def test_diagonal_voxels_join_and_gaps_split() -> None:
    prob = np.zeros((10, 10, 10), np.float32)
    prob[1, 1, 1] = prob[2, 2, 2] = prob[3, 3, 3] = prob[4, 4, 4] = 0.9  # corner-touching chain
    prob[8, 8, 1] = prob[8, 8, 3] = 0.9  # one empty voxel between: two components
    labels = segment(prob, (1.0, 1.0, 1.0), min_lesion_mm3=0)
    assert labels.dtype == np.int32 and labels.max() == 3
    assert len(np.unique(labels[1:5, 1:5, 1:5][prob[1:5, 1:5, 1:5] > 0])) == 1
    assert labels[1, 1, 1] == 1  # largest first


def test_min_size_in_mm3_with_anisotropic_zooms() -> None:
    prob = np.zeros((12, 12, 6), np.float32)
    prob[1:3, 1:3, 1] = 0.8  # 4 voxels = 3.0 mm3: kept at a 3 mm3 minimum
    prob[6:9, 6, 3] = 0.8  # 3 voxels = 2.25 mm3: removed
    prob[6:11, 9:11, 2:4] = 0.7  # 20 voxels = 15 mm3
    labels = segment(prob, ZOOMS, min_lesion_mm3=3.0)
    assert labels.max() == 2
    assert (labels == 1).sum() == 20 and (labels == 2).sum() == 4
    assert not labels[6:9, 6, 3].any()
    table = lesion_table(labels, np.diag([*ZOOMS, 1.0]), ZOOMS)
    assert [row["voxels"] for row in table] == [20, 4]
    assert table[0]["volume_ml"] == pytest.approx(0.015) and table[1]["volume_ml"] == pytest.approx(0.003)


def test_threshold_is_inclusive_and_defaults_are_named() -> None:
    prob = np.zeros((5, 5, 5), np.float32)
    prob[2, 2, 2] = DEFAULT_THRESHOLD
    assert segment(prob, (2.0, 2.0, 2.0), min_lesion_mm3=0).max() == 1
    assert segment(prob, (1.0, 1.0, 1.0)).max() == 0  # one 1 mm3 voxel is below the default minimum
    assert DEFAULT_MIN_LESION_MM3 > 1.0


def test_table_centroid_in_world_mm_and_bbox() -> None:
    labels = np.zeros((8, 9, 10), np.int32)
    labels[2:5, 3, 4:6] = 1  # centroid voxel (3, 3, 4.5)
    affine = np.array([[0, 0, -3.0, 10], [0.5, 0, 0, -20], [0, 0.5, 0, 5], [0, 0, 0, 1]])
    (row,) = lesion_table(labels, affine, ZOOMS)
    assert row["id"] == 1 and row["voxels"] == 6
    np.testing.assert_allclose(row["centroid_mm"], [10 - 13.5, -20 + 1.5, 5 + 1.5])
    assert row["bbox"] == {"min": [2, 3, 4], "max": [4, 3, 5]}


def test_empty_prediction() -> None:
    labels = segment(np.zeros((4, 4, 4), np.float32), ZOOMS)
    assert labels.dtype == np.int32 and not labels.any()
    assert lesion_table(labels, np.eye(4), ZOOMS) == []


def test_table_matches_a_per_lesion_count_on_random_labels() -> None:
    """The all-lesions-at-once table equals counting each label on its own; label numbers without
    voxels (labels not from `segment`) give no row."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 9, (14, 11, 7)).astype(np.int32)
    labels[labels == 4] = 0  # a gap in the numbering
    affine = np.array([[0.8, 0.1, 0, -5], [0, 0.9, 0.2, 7], [0.1, 0, 2.5, 1], [0, 0, 0, 1]])
    table = lesion_table(labels, affine, (0.8, 0.9, 2.5))
    assert [row["id"] for row in table] == [1, 2, 3, 5, 6, 7, 8]
    for row in table:
        coords = np.argwhere(labels == row["id"])
        assert row["voxels"] == len(coords)
        assert row["bbox"] == {"min": coords.min(0).tolist(), "max": coords.max(0).tolist()}
        np.testing.assert_allclose(row["centroid_mm"], affine[:3, :3] @ coords.mean(0) + affine[:3, 3])
