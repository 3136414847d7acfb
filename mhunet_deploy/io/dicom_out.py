"""DICOM SEG and SR outputs for a DICOM series input (optional extra ``dicom``: pydicom, highdicom).

A PACS and its viewers place a SEG by the series it references, so the SEG is written on the
source slices themselves: one frame per source slice and segment, the source's Frame of Reference,
orientation, pixel spacing and slice positions, and per-frame references to the source SOP
Instance UIDs. highdicom builds and checks all of that from the source headers; the masks are
already on the input's exact voxel grid (the pipeline maps its output back), so no resampling
happens here. Segments are a mapping from label to (codes, mask), so a second segment is one entry.
The SR (TID 1500) carries the lesion report's numbers and references the SEG's segments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from .. import __version__
from ..errors import InputError
from ..files import atomic_write
from ..report import DISCLAIMER
from .nifti import Volume

INSTALL_HINT = 'pip install "mhunet-deploy[dicom]"'
SEG_SERIES_NUMBER, SR_SERIES_NUMBER = 901, 902
MANUFACTURER = "mhunet-deploy"
LESION_LABEL, BRAIN_LABEL = "MS lesion", "Brain"
MILLILITER = Code("mL", "UCUM", "milliliter")
LESION_COUNT_UNIT = Code("{lesions}", "UCUM", "lesions")


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
    return hd.AlgorithmIdentificationSequence(
        name="mhunet",
        family=codes.cid7162.ArtificialIntelligence,
        version=_algorithm_version(model_info),
        source=MANUFACTURER,
        parameters={"model": str(model_info["name"]), "sha256": str(model_info["sha256"])},
    )


def _algorithm_version(model_info: Mapping[str, Any]) -> str:
    return f"{__version__} {model_info['name']} {str(model_info['sha256'])[:12]}"


def build_seg(
    volume: Volume, segments: Mapping[str, tuple[SegmentCodes, np.ndarray]], model_info: Mapping[str, Any]
) -> Any:
    """A binary DICOM SEG of ``segments`` (label -> codes, mask on the input grid) on the source slices.

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
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        content_label="MHUNET",
        content_description=DISCLAIMER,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        series_description=_series_description(", ".join(segments), sources[0]),
        omit_empty_frames=False,
        **_equipment(model_info),
    )


def build_sr(volume: Volume, seg: Any, report: Mapping[str, Any], model_info: Mapping[str, Any]) -> Any:
    """A Comprehensive 3D SR, TID 1500 Measurement Report, of the lesion report's numbers.

    The lesion segment of ``seg`` gets a TID 1411 group (it is the region measured): number of
    lesions and total volume; so does its brain segment, if any: brain volume. Each lesion gets a
    TID 1501 group with its volume, tracked as "MS lesion <id>" with the report's and CSV's id; it
    references no region of its own, because the SEG holds all lesions in one segment (a lesion is
    one 26-connected component of it).
    """
    hd = _highdicom(str(volume.path))
    algo = hd.sr.AlgorithmIdentification(
        name="mhunet",
        version=_algorithm_version(model_info),
        parameters=[f"model={model_info['name']}", f"sha256={model_info['sha256']}"],
    )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=hd.UID(),
        name="mhunet",
        manufacturer_name=MANUFACTURER,
        model_name=f"Mamba-HUNet {model_info['name']}",
        serial_number=str(model_info["sha256"])[:64],
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    number = {str(s.SegmentLabel): int(s.SegmentNumber) for s in seg.SegmentSequence}

    def region(label: str) -> Any:
        # Built by hand: ReferencedSegment.from_segmentation (highdicom 0.28) expects the segment
        # number per frame, and a one-segment SEG keeps it in the shared functional groups.
        return hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=number[label],
            source_images=[
                hd.sr.SourceImageForSegmentation(ds.SOPClassUID, ds.SOPInstanceUID) for ds in volume.dicom
            ],
        )

    in_brain = [hd.sr.FindingSite(codes.SCT.Brain)]
    common = {"finding_type": codes.SCT.Lesion, "finding_sites": in_brain, "algorithm_id": algo}
    groups = [
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{LESION_LABEL}s"),
            referenced_segment=region(LESION_LABEL),
            finding_category=LESION.category,
            measurements=[
                hd.sr.Measurement(codes.SCT.NumberOfLesions, report["lesion_count"], LESION_COUNT_UNIT),
                hd.sr.Measurement(codes.SCT.Volume, report["total_volume_ml"], MILLILITER),
            ],
            **common,
        )
    ]
    if BRAIN_LABEL in number:
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=BRAIN_LABEL),
                referenced_segment=region(BRAIN_LABEL),
                finding_type=BRAIN.property_type,
                finding_category=BRAIN.category,
                algorithm_id=algo,
                measurements=[hd.sr.Measurement(codes.SCT.Volume, report["brain"]["volume_ml"], MILLILITER)],
            )
        )
    each = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=hd.UID(), identifier=f"{LESION_LABEL} {lesion['id']}"
            ),
            measurements=[hd.sr.Measurement(codes.SCT.Volume, lesion["volume_ml"], MILLILITER)],
            **common,
        )
        for lesion in report["lesions"]
    ]
    content = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.LN.BrainMRI,
        imaging_measurements=[*groups, *each],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[*volume.dicom, seg],
        content=content,
        series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        series_description=_series_description("MS lesion measurements", volume.dicom[0]),
    )


def _equipment(model_info: Mapping[str, Any]) -> dict[str, str]:
    return {
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": f"Mamba-HUNet {model_info['name']}",
        "software_versions": __version__,
        "device_serial_number": str(model_info["sha256"])[:64],  # the weights are the device
    }


def _series_description(what: str, source: Any) -> str:
    return f"mhunet {what} ({source.get('SeriesDescription', 'series')})"[:64]


def write_dicom(dataset: Any, path: Path) -> Path:
    """Save a SEG or SR atomically, as every output is saved."""
    return atomic_write(path, lambda tmp: dataset.save_as(tmp, enforce_file_format=True))
