"""BTCV (Beyond the Cranial Vault, MICCAI 2015 multi-atlas abdomen): 30 labelled CTs, 13 organs.

Two layouts: the ``dataset_0.json`` of Project-MONAI/research-contributions (UNETR/SwinUNETR; ``training``
24 and ``validation`` 6 pairs under ``imagesTr``/``labelsTr``, ``test`` under ``imagesTs``, abbreviated
label names such as ``rkid``), and the Synapse ``RawData`` download (``Training/img/img0001.nii.gz``,
``Training/label/label0001.nii.gz``, ``Testing/img/img0061.nii.gz``), split like ``dataset_0.json``.
"""

from __future__ import annotations

from pathlib import Path

from .base import read_json, require
from .labelmaps import segmentation_datalist

BTCV_LABELS = {
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal vein and splenic vein",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}
# the validation cases of research-contributions' dataset_0.json
DATASET_0_VALIDATION = tuple(f"{i:04d}" for i in range(35, 41))


def _from_dataset_json(root: Path) -> tuple[dict, dict]:
    meta = read_json(root / "dataset_0.json", ("training", "validation", "labels"))
    splits = {}
    for key in ("training", "validation"):
        splits[key] = []
        for index, entry in enumerate(meta[key]):
            for field in ("image", "label"):
                if field not in entry:
                    raise KeyError(f"{root / 'dataset_0.json'} {key}[{index}]: no {field!r}")
                require(root / entry[field], f"{root / 'dataset_0.json'} {key}[{index}] {field!r} file")
            subject = Path(entry["image"]).name.removesuffix(".nii.gz")
            splits[key].append({"image": entry["image"], "label": entry["label"], "subject": subject})
    splits["test"] = [{"image": e if isinstance(e, str) else e["image"]} for e in meta.get("test", [])]
    return splits, {int(k): v for k, v in meta["labels"].items() if int(k)}


def _from_raw(root: Path) -> tuple[dict, dict]:
    raw = root / "RawData" if (root / "RawData").is_dir() else root
    images = sorted(require(raw / "Training" / "img", "BTCV RawData folder").glob("img*.nii.gz"))
    if not images:
        raise FileNotFoundError(f"no img*.nii.gz in {raw / 'Training' / 'img'}")
    cases = []
    for image in images:
        number = image.name.removeprefix("img").removesuffix(".nii.gz")
        label = require(raw / "Training" / "label" / f"label{number}.nii.gz", f"label of {image}")
        cases.append(
            {
                "image": str(image.relative_to(root)),
                "label": str(label.relative_to(root)),
                "subject": f"img{number}",
            }
        )
    test = [
        {"image": str(p.relative_to(root))} for p in sorted((raw / "Testing" / "img").glob("img*.nii.gz"))
    ]
    is_val = lambda c: c["subject"].removeprefix("img") in DATASET_0_VALIDATION  # noqa: E731
    splits = {
        "training": [c for c in cases if not is_val(c)],
        "validation": [c for c in cases if is_val(c)],
        "test": test,
    }
    return splits, BTCV_LABELS


def btcv(root: str | Path, target: str | None = None, labels_dir: str = "medfm_labels") -> dict:
    """Datalist of a BTCV folder: ``dataset_0.json`` when ``root`` has one, else the RawData layout."""
    root = Path(root)
    json_layout = (root / "dataset_0.json").is_file()
    splits, own = (_from_dataset_json if json_layout else _from_raw)(root)
    layout = "dataset_0.json 24/6 split" if json_layout else "RawData, dataset_0.json's validation cases"
    return segmentation_datalist(
        "btcv", f"BTCV abdomen CT, 13 organs ({layout})", root, splits, own, target, labels_dir
    )
