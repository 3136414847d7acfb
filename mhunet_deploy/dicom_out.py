"""DICOM SEG output for a DICOM series input (optional extra ``dicom``: pydicom and highdicom).

A PACS and its viewers place a SEG by the series it references, so the SEG is written on the
source slices themselves: one frame per source slice and segment, the source's Frame of Reference,
orientation, pixel spacing and slice positions, and per-frame references to the source SOP
Instance UIDs. highdicom builds and checks all of that from the source headers; the masks are
already on the input's exact voxel grid (the pipeline maps its output back), so no resampling
happens here. Segments are a mapping from label to (codes, mask), so a second segment is one entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from . import __version__
from .errors import InputError
from .report import DISCLAIMER
from .volume_io import Volume, atomic_write

INSTALL_HINT = 'pip install "mhunet-deploy[dicom]"'
SEG_SERIES_NUMBER = 901
MANUFACTURER = "mhunet-deploy"


@dataclass(frozen=True)
class SegmentCodes:
    """What a segment is, in SNOMED CT (DICOM CID 7150/7151): category, type, where in the body."""

    category: Code
    property_type: Code
    anatomic_region: Code | None = None


#: A white-matter lesion: Morphologically Abnormal Structure / Lesion, in the brain.
LESION = SegmentCodes(codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion, codes.SCT.Brain)
#: The brain itself (brain extraction): Anatomical Structure / Brain.
BRAIN = SegmentCodes(codes.SCT.AnatomicalStructure, codes.SCT.Brain)


def _highdicom(what: str) -> Any:
    try:
        import highdicom
    except ImportError:
        raise InputError(
            f"{what}: writing a DICOM SEG needs highdicom; {INSTALL_HINT}, or pass --no-dicom-seg"
        ) from None
    return highdicom


def check_seg_sources(volume: Volume) -> None:
    """Refuse, before the model runs, a series whose SEG a viewer could not place on it."""
    folder = volume.path or Path("the series")
    _highdicom(str(folder))
    frames = {str(ds.get("FrameOfReferenceUID", "")) for ds in volume.dicom}
    if "" in frames:
        raise InputError(
            f"{folder}: the slices lack FrameOfReferenceUID, so a DICOM SEG cannot be placed on them; "
            "export the series with it, or pass --no-dicom-seg"
        )
    if len(frames) > 1:
        raise InputError(
            f"{folder}: the slices have {len(frames)} different FrameOfReferenceUIDs; "
            "export the series again, or pass --no-dicom-seg"
        )


def algorithm(model_info: Mapping[str, Any]) -> Any:
    """The AlgorithmIdentificationSequence of every segment (and measurement): mhunet, its version,
    the model's name and hash (the version is capped at 64 characters; the full hash is a parameter)."""
    hd = _highdicom("DICOM output")
    name, sha = str(model_info["name"]), str(model_info["sha256"])
    return hd.AlgorithmIdentificationSequence(
        name="mhunet",
        family=codes.cid7162.ArtificialIntelligence,
        version=f"{__version__} {name} {sha[:12]}",
        source=MANUFACTURER,
        parameters={"model": name, "sha256": sha},
    )


def write_seg(
    volume: Volume,
    segments: Mapping[str, tuple[SegmentCodes, np.ndarray]],
    path: Path,
    model_info: Mapping[str, Any],
) -> Path:
    """Write a binary DICOM SEG of ``segments`` (label -> codes, mask on the input grid) atomically.

    Every source slice gets a frame per segment, empty ones included: the SEG's frames are the source
    slices, which the simplest reader can pair by position or by referenced SOP Instance UID.
    """
    hd = _highdicom(str(volume.path))
    sources = volume.dicom
    algo = algorithm(model_info)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=kind.category,
            segmented_property_type=kind.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
            tracking_uid=hd.UID(),
            tracking_id=label,
            anatomic_regions=[kind.anatomic_region] if kind.anatomic_region else None,
        )
        for number, (label, (kind, _)) in enumerate(segments.items(), start=1)
    ]
    # Voxel (i, j, k) is column i, row j of source slice k: frames are (slice, row, column, segment).
    pixels = np.stack([mask.astype(bool).transpose(2, 1, 0) for _, mask in segments.values()], axis=-1)
    first = sources[0]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=f"Mamba-HUNet {model_info['name']}",
        software_versions=__version__,
        device_serial_number=str(model_info["sha256"])[:64],  # the weights are the device
        content_label="MHUNET",
        content_description=DISCLAIMER,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        series_description=f"mhunet {', '.join(segments)} ({first.get('SeriesDescription', 'series')})"[:64],
        omit_empty_frames=False,
    )
    return atomic_write(path, lambda tmp: seg.save_as(tmp, enforce_file_format=True))
