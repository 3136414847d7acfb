"""Inputs and outputs, the first and last stage of `mhunet infer`. No torch, no onnx.

- ``formats``: which file is which (suffixes and magic bytes), the one place those rules live;
- ``nifti``: the NIfTI reader, validating into a :class:`~mhunet_deploy.io.nifti.Volume`;
- ``dicom``: the DICOM series reader (extra ``dicom``), into the same ``Volume``;
- ``outputs``: the output folder and geometry-exact NIfTI outputs;
- ``dicom_out``: DICOM SEG and SR of a DICOM input (extra ``dicom``);
- here: what the command line names (``expand_inputs``) and reading one input, by its type
  (``read_input``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .formats import BATCH_SUFFIXES, is_dicom_folder
from .nifti import Volume, load_volume


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given; a folder is one DICOM series if it holds DICOM slices, else a batch of its
    NIfTI files in name order."""
    files: list[Path] = []
    for p in inputs:
        if not p.is_dir():
            files.append(p)
            continue
        found = sorted(q for q in p.iterdir() if q.name.endswith(BATCH_SUFFIXES))
        dicom = is_dicom_folder(p)
        if found and dicom:
            raise InputError(
                f"{p} holds both NIfTI files and DICOM slices; move the DICOM series into its own folder"
            )
        if not found and not dicom:
            raise InputError(f"{p}: folder holds no .nii/.nii.gz files and no DICOM slices")
        files.extend(found or [p])
    return files


def read_input(
    path: Path, volume_index: int | None = None, series_uid: str | None = None, seg_sources: bool = False
) -> Volume:
    """One input as a validated Volume: a folder is a DICOM series (``series_uid`` picks one of
    several), anything else a NIfTI file (``volume_index`` picks a volume of a 4D one). ``seg_sources``:
    a series a DICOM SEG could not reference is refused here, before the model runs."""
    path = Path(path)
    if not path.is_dir():
        return load_volume(path, volume_index)
    from .dicom import load_dicom_series

    volume = load_dicom_series(path, series_uid)
    if seg_sources:
        from .dicom_out import check_seg_sources

        check_seg_sources(volume)
    return volume
