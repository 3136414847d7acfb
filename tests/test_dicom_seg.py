"""DICOM SEG out of `mhunet infer` on a DICOM series: a standard reader places it exactly on the source.

The series are made from the real oblique clinical FLAIR (256x256 in plane, 0.9 mm, 8.1 mm slices,
tilted ~18 degrees), once as stored and once with its rows flipped so that the slices run against
the DICOM slice normal; file names are shuffled, never in slice order. One `mhunet infer` batch
segments both; each SEG is then read back two ways, by highdicom's own geometry (its volume and
affine) and by plain pydicom per-frame references, and compared voxel for voxel with the NIfTI
mask of the same run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mhunet_deploy.errors import InputError
from tests.dicom_helpers import (
    CLINICAL,
    LPS_TO_RAS,
    clinical_crop,
    needs_highdicom,
    seg_on_grid,
    write_series,
)
from tests.tiny_model import TWO, save_tiny

pytestmark = [
    needs_highdicom,
    pytest.mark.skipif(not CLINICAL.exists(), reason=f"{CLINICAL} is absent (shared data not mounted)"),
]
#: The tiny random model's lesion probabilities lie near 0.018: this threshold and minimum size give a
#: few dozen input-dependent lesions.
POSTPROCESS = ("--threshold", "0.019", "--min-lesion-mm3", "100")
SLICES = slice(7, 12)
SERIES = ("oblique", "against_normal")


def _flip_rows(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels in the same places with voxel axis 1 reversed: the slice normal flips."""
    flipped = affine.copy()
    flipped[:3, 3] += affine[:3, 1] * (data.shape[1] - 1)
    flipped[:3, 1] *= -1
    return data[:, ::-1, :], flipped


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One `mhunet infer` batch over both series; returns the folder holding series and outputs."""
    root = tmp_path_factory.mktemp("seg")
    data, affine = clinical_crop(SLICES)
    write_series(root / "oblique", data, affine)
    write_series(root / "against_normal", *_flip_rows(data, affine))
    tiny = save_tiny(root / "tiny.safetensors", outputs=TWO)  # lesion + brain: two segments
    cmd = [sys.executable, "-m", "mhunet_deploy.cli", "infer", *(str(root / s) for s in SERIES)]
    res = subprocess.run(
        [*cmd, "-o", str(root / "out"), "--checkpoint", str(tiny), *POSTPROCESS, "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    return root


def _sources(folder: Path) -> dict[str, object]:
    import pydicom

    return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in sorted(folder.iterdir()))}


def _nifti_index(mask: nib.Nifti1Image, lps_point: np.ndarray) -> np.ndarray:
    return (np.linalg.inv(mask.affine) @ LPS_TO_RAS @ np.append(lps_point, 1.0))[:3]


@pytest.mark.parametrize("name", SERIES)
def test_highdicom_places_the_seg_on_the_nifti_mask(run: Path, name: str) -> None:
    """highdicom rebuilds the SEG as a volume with its own affine; every voxel of it lands on an
    integer voxel of the NIfTI mask of the same run, with the same value."""
    mask = nib.load(run / "out" / f"{name}_mask.nii.gz")
    want = np.asarray(mask.dataobj)
    assert 0 < want.sum() < want.size / 4, "the tiny model should find some lesions, not everything"
    np.testing.assert_array_equal(seg_on_grid(run / "out" / f"{name}_seg.dcm", mask), want)
    brain = np.asarray(nib.load(run / "out" / f"{name}_brain.nii.gz").dataobj)
    np.testing.assert_array_equal(seg_on_grid(run / "out" / f"{name}_seg.dcm", mask, segment=2), brain)


@pytest.mark.parametrize("name", SERIES)
def test_every_frame_references_its_source_slice(run: Path, name: str) -> None:
    """Read with pydicom alone: each frame names a source SOP instance and carries that slice's
    position; its pixels are the NIfTI mask's slice at that position. Study, patient and frame of
    reference are the source's; the segment is coded and names the algorithm."""
    import pydicom

    sources = _sources(run / name)
    mask = nib.load(run / "out" / f"{name}_mask.nii.gz")
    want = {
        1: np.asarray(mask.dataobj),
        2: np.asarray(nib.load(run / "out" / f"{name}_brain.nii.gz").dataobj),
    }
    seg = pydicom.dcmread(run / "out" / f"{name}_seg.dcm")
    first = next(iter(sources.values()))
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "PatientName", "AccessionNumber"):
        assert seg[keyword].value == first[keyword].value, keyword
    assert seg.SeriesInstanceUID != first.SeriesInstanceUID
    assert seg.ContentQualification == "RESEARCH"
    assert int(seg.NumberOfFrames) == 2 * len(sources)  # one frame per slice and segment
    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(
        shared.PlaneOrientationSequence[0].ImageOrientationPatient, first.ImageOrientationPatient
    )
    np.testing.assert_allclose(shared.PixelMeasuresSequence[0].PixelSpacing, first.PixelSpacing)
    frames = seg.pixel_array
    seen = set()
    for f, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        source = sources[str(uid)]
        position = np.asarray(group.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(position, source.ImagePositionPatient, atol=1e-4)
        _, _, k = np.round(_nifti_index(mask, position)).astype(int)
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        np.testing.assert_array_equal(frames[f], want[number][:, :, k].T)
        seen.add((str(uid), number))
    assert seen == {(uid, number) for uid in sources for number in (1, 2)}
    sha = json.loads((run / "out" / f"{name}_report.json").read_text())["model"]["sha256"]
    codes = {
        "MS lesion": ("49755003", "52988006", "12738006"),  # abnormal structure, lesion, in the brain
        "Brain": ("91723000", "12738006", None),  # anatomical structure, brain
    }
    assert [s.SegmentLabel for s in seg.SegmentSequence] == list(codes)
    for segment, (category, kind, region) in zip(seg.SegmentSequence, codes.values(), strict=True):
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        for sequence, value in (("Category", category), ("Type", kind)):
            code = segment[f"SegmentedProperty{sequence}CodeSequence"][0]
            assert (code.CodingSchemeDesignator, code.CodeValue) == ("SCT", value)
        assert (segment.AnatomicRegionSequence[0].CodeValue if region else None) == region
        algo = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == "mhunet" and sha[:12] in algo.AlgorithmVersion
        assert sha in algo.AlgorithmParameters


def test_the_sr_carries_the_report_and_references_the_seg(run: Path) -> None:
    """TID 1500 read back with highdicom: the lesion segment's group holds the count and total
    volume, one group per lesion its volume under the report's id; evidence and study are the
    source's and the SEG's."""
    import highdicom as hd
    import pydicom

    report = json.loads((run / "out" / "oblique_report.json").read_text())
    seg = pydicom.dcmread(run / "out" / "oblique_seg.dcm", stop_before_pixels=True)
    sr = hd.sr.srread(run / "out" / "oblique_sr.dcm")
    first = next(iter(_sources(run / "oblique").values()))
    assert sr.StudyInstanceUID == first.StudyInstanceUID and sr.PatientID == first.PatientID
    assert sr.ContentQualification == "RESEARCH" and sr.CompletionFlag == "COMPLETE"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert {s.SeriesInstanceUID for s in evidence} == {first.SeriesInstanceUID, seg.SeriesInstanceUID}
    whole, brain = sr.content.get_volumetric_roi_measurement_groups()
    assert brain.referenced_segment.referenced_segment_numbers == [2]
    assert brain.finding_type.value == "12738006"
    assert [(m.name.value, m.value) for m in brain.get_measurements()] == [
        ("118565006", pytest.approx(report["brain"]["volume_ml"]))
    ]
    referenced = whole.referenced_segment
    assert referenced.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert referenced.referenced_segment_numbers == [1]
    assert len(referenced.source_images_for_segmentation) == len(_sources(run / "oblique"))
    assert whole.finding_type.value == "52988006"  # lesion
    values = {m.name.value: m.value for m in whole.get_measurements()}
    assert values == {
        "246206008": report["lesion_count"],  # number of lesions
        "118565006": pytest.approx(report["total_volume_ml"]),  # volume (mL)
    }
    assert report["lesion_count"] > 1
    each = {
        g.tracking_identifier: [(m.name.value, m.value, m.unit.value) for m in g.get_measurements()]
        for g in sr.content.get_image_measurement_groups()
    }
    assert each == {
        f"MS lesion {lesion['id']}": [("118565006", pytest.approx(lesion["volume_ml"]), "mL")]
        for lesion in report["lesions"]
    }


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy absent: apt-get install dicom3tools")
def test_dciodvfy_finds_no_error_in_the_seg_or_the_sr(run: Path) -> None:
    for path, iod in [(run / "out" / f"{name}_seg.dcm", "Segmentation") for name in SERIES] + [
        (run / "out" / "oblique_sr.dcm", "Comprehensive3DSR")
    ]:
        res = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
        assert res.returncode == 0 and not errors, "\n".join(errors)
        assert iod in res.stdout + res.stderr  # it recognised the IOD it checked


def test_dicom_outputs_follow_the_options(tmp_path: Path) -> None:
    from mhunet_deploy.pipeline import InferOptions, output_paths

    (tmp_path / "series").mkdir()

    def keys(**options: bool) -> set[str]:
        return set(output_paths(tmp_path / "series", tmp_path, InferOptions(**options)))

    assert {"seg", "sr"} <= keys()
    assert "seg" in keys(dicom_sr=False) and "sr" not in keys(dicom_sr=False)
    assert not {"seg", "sr"} & keys(dicom_seg=False)
    assert not {"seg", "sr"} & set(output_paths(tmp_path / "scan.nii.gz", tmp_path, InferOptions()))


FRAME_OF_REFERENCE_REFUSED = {
    "none": (lambda k, ds: delattr(ds, "FrameOfReferenceUID"), "the slices lack FrameOfReferenceUID"),
    "two": (
        lambda k, ds: k == 2 and setattr(ds, "FrameOfReferenceUID", "1.2.3.4"),
        "the slices have 2 different FrameOfReferenceUIDs",
    ),
}


@pytest.mark.parametrize("case", FRAME_OF_REFERENCE_REFUSED)
def test_a_series_without_one_frame_of_reference_is_refused_unless_no_seg(tmp_path: Path, case: str) -> None:
    from mhunet_deploy.pipeline import InferOptions, load_input

    edit, words = FRAME_OF_REFERENCE_REFUSED[case]
    data = np.random.default_rng(6).integers(1, 500, (8, 9, 4)).astype(np.float32)
    write_series(tmp_path / "s", data, np.diag([0.9, 0.9, 5.0, 1.0]), edit=edit)
    with pytest.raises(InputError) as info:
        load_input(tmp_path / "s", InferOptions())
    message = str(info.value)
    assert words in message and message.endswith("or pass --no-dicom-seg") and "\n" not in message
    assert load_input(tmp_path / "s", InferOptions(dicom_seg=False)).data.shape == data.shape


def test_without_highdicom_one_line_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    from mhunet_deploy.pipeline import InferOptions, load_input

    data = np.random.default_rng(7).integers(1, 500, (8, 9, 3)).astype(np.float32)
    write_series(tmp_path / "s", data, np.diag([0.9, 0.9, 5.0, 1.0]))
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(InputError, match=r'needs highdicom; pip install "mhunet-deploy\[dicom\]", or pass'):
        load_input(tmp_path / "s", InferOptions())
    assert load_input(tmp_path / "s", InferOptions(dicom_seg=False)).dicom


def test_a_seg_that_cannot_be_written_takes_the_other_outputs_with_it(tmp_path: Path) -> None:
    from mhunet_deploy.errors import OutputError
    from mhunet_deploy.pipeline import InferOptions, infer_volume
    from tests.fake_backends import EverywhereLesion

    data = np.random.default_rng(8).integers(1, 500, (8, 9, 3)).astype(np.float32)
    write_series(tmp_path / "s", data, np.diag([0.9, 0.9, 5.0, 1.0]))
    out = tmp_path / "out"
    (out / "s_seg.dcm").mkdir(parents=True)  # the SEG's name is taken by a folder
    with pytest.raises(OutputError, match="is a folder"):
        infer_volume(
            tmp_path / "s",
            out,
            EverywhereLesion(),
            InferOptions(model_info={"name": "test", "sha256": "0" * 64}),
        )
    assert [p.name for p in out.iterdir()] == ["s_seg.dcm"]  # mask, report, csv and SR were removed again


def test_each_segment_lands_on_its_own_mask(tmp_path: Path) -> None:
    """Two unrelated, asymmetric masks on the oblique series: each comes back as its own segment."""
    from mhunet_deploy.io.dicom import load_dicom_series
    from mhunet_deploy.io.dicom_out import BRAIN, LESION, build_seg, write_dicom

    write_series(tmp_path / "s", *clinical_crop(slice(7, 10)))
    volume = load_dicom_series(tmp_path / "s")
    lesion = np.random.default_rng(10).random(volume.data.shape) < 0.01
    brain = volume.data > np.median(volume.data)
    segments = {"MS lesion": (LESION, lesion), "Brain": (BRAIN, brain)}
    write_dicom(build_seg(volume, segments, {"name": "test", "sha256": "0" * 64}), tmp_path / "seg.dcm")
    for number, (_, mask) in enumerate(segments.values(), start=1):
        np.testing.assert_array_equal(seg_on_grid(tmp_path / "seg.dcm", volume.image, number), mask)


def test_a_users_brain_mask_is_not_put_in_the_seg(tmp_path: Path) -> None:
    """--brain-mask restricts the lesions, but it is the user's mask, not mhunet's: no Brain segment."""
    import highdicom as hd
    import pydicom

    from mhunet_deploy.io.dicom import load_dicom_series
    from mhunet_deploy.pipeline import InferOptions, infer_volume
    from tests.fake_backends import EverywhereLesion

    data = np.random.default_rng(11).integers(1, 500, (8, 9, 3)).astype(np.float32)
    write_series(tmp_path / "s", data, np.diag([0.9, 0.9, 5.0, 1.0]))
    grid = load_dicom_series(tmp_path / "s").image
    nib.save(nib.Nifti1Image(np.ones(grid.shape, np.uint8), grid.affine), tmp_path / "brain.nii.gz")
    options = InferOptions(
        model_info={"name": "test", "sha256": "0" * 64}, brain_mask=tmp_path / "brain.nii.gz"
    )
    report = infer_volume(tmp_path / "s", tmp_path / "out", EverywhereLesion(), options)
    assert report["brain"]["source"] == "user" and report["lesion_count"] == 1
    seg = pydicom.dcmread(report["outputs"]["seg"], stop_before_pixels=True)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["MS lesion"]
    assert len(hd.sr.srread(report["outputs"]["sr"]).content.get_volumetric_roi_measurement_groups()) == 1
