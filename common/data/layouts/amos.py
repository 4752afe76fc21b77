"""AMOS 2022 (Ji et al., NeurIPS 2022): ``dataset.json`` with ``training`` (``./imagesTr``/``./labelsTr``),
``validation`` (``./imagesVa``/``./labelsVa``), ``test`` and 15 abdominal organ ``labels``. Case ids below
500 are CT, from 500 MRI; ``modality`` picks ``"CT"``, ``"MRI"`` or ``"all"``. Its ``prostate/uterus``
class maps onto no bundle class (it is the uterus in female patients)."""

from __future__ import annotations

from pathlib import Path

from .base import read_json, require
from .labelmaps import segmentation_datalist

MODALITIES = ("CT", "MRI", "all")
MRI_FROM_ID = 500


def _modality(path: str) -> str:
    return "CT" if int(Path(path).name.removesuffix(".nii.gz").split("_")[-1]) < MRI_FROM_ID else "MRI"


def amos(
    root: str | Path, target: str | None = None, modality: str = "CT", labels_dir: str = "medfm_labels"
) -> dict:
    """Datalist of the AMOS 2022 folder ``root`` (``amos22/``) for the cases of ``modality``."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    root = Path(root)
    meta = read_json(root / "dataset.json", ("training", "validation", "labels"))
    splits = {}
    for key in ("training", "validation", "test"):
        splits[key] = []
        for index, entry in enumerate(meta.get(key, [])):
            entry = {"image": entry} if isinstance(entry, str) else entry
            where = f"{root / 'dataset.json'} {key}[{index}]"
            if "image" not in entry or (key != "test" and "label" not in entry):
                raise KeyError(
                    f"{where}: needs 'image'{'' if key == 'test' else ' and label'} (has {sorted(entry)})"
                )
            item = {f: entry[f].removeprefix("./") for f in ("image", "label") if f in entry}
            item["modality"] = _modality(item["image"])
            if modality not in ("all", item["modality"]):
                continue
            for field, path in item.items():
                if field != "modality":
                    require(root / path, f"{where} {field!r} file")
            item["subject"] = Path(item["image"]).name.removesuffix(".nii.gz")
            splits[key].append(item)
    return segmentation_datalist(
        "amos22",
        f"AMOS 2022, 15 abdominal organs, {modality} cases (ids < {MRI_FROM_ID} CT)",
        root,
        splits,
        {int(k): v for k, v in meta["labels"].items() if int(k)},
        target,
        labels_dir,
        {"0": modality},
    )
