"""CheXpert (Irvin et al., AAAI 2019): ``train.csv``/``valid.csv`` with ``Path`` (starting with the
release folder, e.g. ``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``), ``Sex``, ``Age``,
``Frontal/Lateral``, ``AP/PA`` and 14 observations valued 1 (positive), 0 (negative), -1 (uncertain) or blank
(unmentioned). Unmentioned is negative. Uncertain follows the paper's policies (its Sec. 4):
``"ones"`` (U-Ones, default: the best policy for Atelectasis and Edema and the common baseline), ``"zeros"``
(U-Zeros) or ``"ignore"`` (U-Ignore: 0 in ``findings`` and 0 in ``findings_annotated``, so a masked loss
skips it). ``valid.csv`` becomes ``validation``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from .base import datalist, read_csv, require

CHEXPERT_FINDINGS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
UNCERTAIN_POLICIES = ("ones", "zeros", "ignore")
VALUES = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-1": -1, "-1.0": -1, "": None}


def labeller_findings(
    row: Mapping[str, str], findings: Sequence[str], uncertain: str, where: str
) -> tuple[list[int], list[int]]:
    """``(findings, findings_annotated)`` of one CheXpert-labeller row under the ``uncertain`` policy;
    ValueError naming ``where`` and the column for a value other than 1, 0, -1 or blank."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    values, annotated = [], []
    for name in findings:
        raw = row[name].strip()
        if raw not in VALUES:
            raise ValueError(f"{where}: column {name!r} has {raw!r}; expected 1, 0, -1 or blank")
        value = VALUES[raw]
        values.append(int(value == 1 or (value == -1 and uncertain == "ones")))
        annotated.append(int(not (value == -1 and uncertain == "ignore")))
    return values, annotated


def chexpert(root: str | Path, uncertain: str = "ones", frontal_only: bool = False) -> dict:
    """Datalist of the CheXpert folder ``root`` (``CheXpert-v1.0`` or ``-small``, holding the CSVs)."""
    root = Path(root)
    columns = ("Path", "Frontal/Lateral", "AP/PA", *CHEXPERT_FINDINGS)
    splits = {}
    for key, csv_name in (("training", "train.csv"), ("validation", "valid.csv")):
        splits[key] = []
        for line, row in enumerate(read_csv(root / csv_name, columns), start=2):
            if frontal_only and row["Frontal/Lateral"] != "Frontal":
                continue
            where = f"{root / csv_name} line {line}"
            parts = PurePosixPath(row["Path"]).parts
            image = str(PurePosixPath(*parts[1:])) if parts[0].startswith("CheXpert-v1.0") else row["Path"]
            require(root / image, f"{where} 'Path' image")
            findings, annotated = labeller_findings(row, CHEXPERT_FINDINGS, uncertain, where)
            view = row["Frontal/Lateral"] if row["Frontal/Lateral"] == "Lateral" else row["AP/PA"]
            splits[key].append(
                {"image": image, "view": view, "findings": findings, "findings_annotated": annotated}
            )
    return datalist(
        "chexpert",
        f"CheXpert chest radiographs, 14 labeller observations; uncertain policy U-{uncertain.capitalize()}; "
        "unmentioned = negative",
        finding_names=list(CHEXPERT_FINDINGS),
        uncertain_policy=uncertain,
        **splits,
    )
