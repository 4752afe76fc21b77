"""MIMIC-CXR-JPG 2.0.0 (Johnson et al.): ``mimic-cxr-2.0.0-chexpert.csv`` (or ``-negbio.csv``: the same 14
observations by the NegBio labeller; ``subject_id``, ``study_id``, values 1.0/0.0/-1.0/blank, per study),
``-split.csv`` (``dicom_id``, ``study_id``, ``subject_id``, ``split`` = train/validate/test) and
``-metadata.csv`` (``dicom_id``, ``ViewPosition``); images ``files/p10/p10000032/s50414267/<dicom_id>.jpg``
(``extension=".dcm"`` for MIMIC-CXR's DICOMs, converted to 2D NIfTI under ``root/images_dir`` as in
:mod:`.dicom`). Uncertain labels follow CheXpert's policies
(:mod:`.chexpert`); a study without a labeller row is left out, as in the CheXpert-labelled benchmarks."""

from __future__ import annotations

from pathlib import Path

from .base import datalist, read_csv, require
from .chexpert import CHEXPERT_FINDINGS, labeller_findings
from .dicom import dicom_to_nifti

SPLITS = {"train": "training", "validate": "validation", "test": "test"}
PREFIX = "mimic-cxr-2.0.0"


def mimic_cxr(
    root: str | Path,
    labeller: str = "chexpert",
    uncertain: str = "ones",
    views: tuple[str, ...] = ("PA", "AP"),
    extension: str = ".jpg",
    images_dir: str = "medfm_images",
) -> dict:
    """Datalist of the MIMIC-CXR folder ``root`` for images whose ``ViewPosition`` is in ``views``
    (empty: all)."""
    if labeller not in ("chexpert", "negbio"):
        raise ValueError(f"labeller must be 'chexpert' or 'negbio', got {labeller!r}")
    root = Path(root)
    label_csv = root / f"{PREFIX}-{labeller}.csv"
    labels = {
        r["study_id"]: (i, r) for i, r in enumerate(read_csv(label_csv, ("study_id", *CHEXPERT_FINDINGS)), 2)
    }
    view = {
        r["dicom_id"]: r["ViewPosition"]
        for r in read_csv(root / f"{PREFIX}-metadata.csv", ("dicom_id", "ViewPosition"))
    }
    splits = {key: [] for key in SPLITS.values()}
    split_csv = root / f"{PREFIX}-split.csv"
    for line, row in enumerate(read_csv(split_csv, ("dicom_id", "study_id", "subject_id", "split")), start=2):
        if row["split"] not in SPLITS:
            raise ValueError(
                f"{split_csv} line {line}: column 'split' has {row['split']!r}; expected {sorted(SPLITS)}"
            )
        if row["dicom_id"] not in view:
            raise KeyError(
                f"{split_csv} line {line}: dicom_id {row['dicom_id']} is not in {PREFIX}-metadata.csv"
            )
        if (views and view[row["dicom_id"]] not in views) or row["study_id"] not in labels:
            continue
        subject = row["subject_id"]
        image = f"files/p{subject[:2]}/p{subject}/s{row['study_id']}/{row['dicom_id']}{extension}"
        require(root / image, f"{split_csv} line {line} image")
        if extension == ".dcm":
            image = dicom_to_nifti(root, image, images_dir)
        label_line, label_row = labels[row["study_id"]]
        findings, annotated = labeller_findings(
            label_row, CHEXPERT_FINDINGS, uncertain, f"{label_csv} line {label_line}"
        )
        splits[SPLITS[row["split"]]].append(
            {
                "image": image,
                "subject": subject,
                "view": view[row["dicom_id"]],
                "findings": findings,
                "findings_annotated": annotated,
            }
        )
    return datalist(
        "mimic_cxr",
        f"MIMIC-CXR, {labeller} labeller, uncertain policy U-{uncertain.capitalize()}, "
        f"views {list(views) or 'all'}",
        finding_names=list(CHEXPERT_FINDINGS),
        uncertain_policy=uncertain,
        **splits,
    )
