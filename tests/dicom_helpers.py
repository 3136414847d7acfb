"""DICOM MR series written with pydicom from a NIfTI-like (data, affine), for the DICOM tests.

Nothing binary is committed: every series is made here, from the real FLAIRs in ../shared/data or from
synthetic voxels. The tags are those a scanner export carries (patient, study, frame of reference,
equipment, MR acquisition), because a DICOM SEG copies and references them.
"""

from __future__ import annotations

import importlib.util
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from tests.tiny_model import PATIENT26

needs_pydicom = pytest.mark.skipif(
    importlib.util.find_spec("pydicom") is None,
    reason='pydicom not installed: pip install "mhunet-deploy[dicom]" to test DICOM input',
)
needs_highdicom = pytest.mark.skipif(
    importlib.util.find_spec("highdicom") is None,
    reason='highdicom not installed: pip install "mhunet-deploy[dicom]" to test DICOM SEG output',
)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SHARED = PATIENT26.parents[2]
#: A clinical 1.5 T FLAIR as acquired: 256x256x20, 0.9 mm in plane, 8.1 mm slices, tilted ~18 degrees.
CLINICAL = SHARED / "real_ms/clinical_ms/101627/FLAIR.nii.gz"


def write_series(
    folder: Path,
    data: np.ndarray,
    affine: np.ndarray,
    *,
    series_uid: str | None = None,
    description: str = "FLAIR",
    rescale: tuple[float, float] = (1.0, 0.0),
    edit: Callable[[int, Any], None] | None = None,
) -> list[Path]:
    """One MR slice file per k of ``data`` (stored as int16 = (value - intercept) / slope), placed by
    ``affine`` (RAS); files are named in a shuffled order, as exports do (never the slice order when
    there are more than two slices). ``edit(k, ds)`` may spoil one. Returns the paths in k order."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
    from pydicom.valuerep import DSfloat

    def decimal(values: Any) -> list[DSfloat]:  # decimal strings fit 16 characters, as scanners write them
        return [DSfloat(float(v), auto_format=True) for v in np.atleast_1d(values)]

    folder.mkdir(parents=True, exist_ok=True)
    lps = LPS_TO_RAS @ affine
    row_step, col_step = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    slice_step = float(np.linalg.norm(lps[:3, 2]))
    normal = np.cross(lps[:3, 0] / row_step, lps[:3, 1] / col_step)
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    rng = np.random.default_rng(len(data.ravel()))
    names = rng.permutation(data.shape[2])
    while data.shape[2] > 2 and np.all(np.diff(names) > 0):
        names = rng.permutation(data.shape[2])
    slope, intercept = rescale
    paths = []
    for k in range(data.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NORM"]
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyDate, ds.SeriesDate, ds.ContentDate = "20261115", "20261115", "20261115"
        ds.StudyTime, ds.SeriesTime, ds.ContentTime = "093012", "094501", "094501"
        ds.AccessionNumber, ds.ReferringPhysicianName = "ACC0042", "Referrer^Rita"
        ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "MR", "Scanner Co", "Model 15"
        ds.StationName, ds.InstitutionName = "MR1", "Test Hospital"
        ds.SeriesDescription, ds.ProtocolName = description, f"t2_tirm_tra_{description}"
        ds.PatientName, ds.PatientID = "Test^Patient", "MHUNET0001"
        ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = "19800101", "F", "046Y"
        ds.BodyPartExamined, ds.PatientPosition = "BRAIN", "HFS"
        ds.ScanningSequence, ds.SequenceVariant = ["SE", "IR"], ["SK", "SP", "MP"]
        ds.ScanOptions, ds.MRAcquisitionType = "IR", "2D"
        ds.RepetitionTime, ds.EchoTime, ds.InversionTime = 9000.0, 81.0, 2500.0
        ds.EchoTrainLength, ds.MagneticFieldStrength, ds.ImagingFrequency = 16, 1.5, 63.6
        ds.SliceThickness = ds.SpacingBetweenSlices = decimal(slice_step)[0]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 5, k + 1
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
        position = lps[:3, 3] + k * lps[:3, 2]
        ds.ImageOrientationPatient = decimal((*lps[:3, 0] / row_step, *lps[:3, 1] / col_step))
        ds.ImagePositionPatient = decimal(position)
        ds.SliceLocation = decimal(position @ normal)[0]
        ds.PixelSpacing = decimal((col_step, row_step))  # between rows, between columns
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        stored = np.round((data[:, :, k].T - intercept) / slope).astype(np.int16)
        ds.PixelData = stored.tobytes()
        if edit:
            edit(k, ds)
        path = folder / f"{description}{names[k]:04d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def zip_of(path: Path, folder: Path | None = None, members: dict[str, bytes] | None = None) -> Path:
    """``folder`` zipped as a user would (its name as the top folder), plus ``members`` as given."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.iterdir()) if folder else []:
            zf.write(p, f"{folder.name}/{p.name}")
        for name, data in (members or {}).items():
            zf.writestr(name, data)
    return path


def expected_image(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (data, affine) a reader sorting along the DICOM slice normal must return."""
    lps = LPS_TO_RAS @ affine
    if lps[:3, 2] @ np.cross(lps[:3, 0], lps[:3, 1]) > 0:
        return data, affine
    flipped = affine.copy()
    flipped[:3, 3] += affine[:3, 2] * (data.shape[2] - 1)
    flipped[:3, 2] *= -1
    return data[:, :, ::-1], flipped


def seg_on_grid(seg_path: Path, mask: nib.Nifti1Image, segment: int = 1) -> np.ndarray:
    """A segment of the SEG as highdicom places it (its own volume and LPS affine), carried onto the
    NIfTI mask's grid by exact index; fails unless every SEG voxel lands on one of its voxels."""
    import highdicom as hd

    volume = hd.seg.segread(seg_path).get_volume()
    assert volume.array.shape[:3] == mask.shape[::-1], (volume.array.shape, mask.shape)
    index = np.indices(volume.array.shape[:3]).reshape(3, -1)
    world = LPS_TO_RAS @ volume.affine @ np.vstack([index, np.ones(index.shape[1])])
    ijk = (np.linalg.inv(mask.affine) @ world)[:3]
    np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-3)  # exactly on the grid, not interpolated
    i, j, k = np.round(ijk).astype(int)
    on_grid = np.zeros(mask.shape, dtype=volume.array.dtype)
    on_grid[i, j, k] = volume.array[..., segment - 1].reshape(-1)
    return on_grid


def clinical_crop(slices: slice) -> tuple[np.ndarray, np.ndarray]:
    """(int16-valued data, affine) of some slices of the oblique clinical FLAIR, full 256x256 in plane."""
    crop = nib.load(CLINICAL).slicer[:, :, slices]
    return np.round(np.asarray(crop.dataobj, dtype=np.float32) * 1000), crop.affine
