"""Medical Segmentation Decathlon (all ten ``TaskXX_*`` folders): ``dataset.json`` with ``training``
(image/label pairs), ``test`` (image paths), ``labels``, ``modality`` and ``numTraining``; files in
``imagesTr``/``labelsTr``/``imagesTs``. Multi-channel images (Task01 BrainTumour's FLAIR/T1w/t1gd/T2w,
Task05 Prostate's T2/ADC) stay 4D: one file, channels in ``modality`` order (set ``in_channels`` to
``len(modality)``). MSD has no validation split: a seeded ``val_fraction`` of the training cases is held
out."""

from __future__ import annotations

from pathlib import Path

from .base import read_json, require, split_groups
from .labelmaps import segmentation_datalist


def _relpath(entry: str, root: Path, where: str) -> str:
    path = entry.removeprefix("./")
    require(root / path, f"{where} file")
    return path


def msd(
    root: str | Path,
    target: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    labels_dir: str = "medfm_labels",
) -> dict:
    """Datalist of one MSD task folder ``root``; ``target`` maps its labels onto a bundle's classes."""
    root = Path(root)
    meta = read_json(root / "dataset.json", ("name", "labels", "modality", "training", "test", "numTraining"))
    if len(meta["training"]) != int(meta["numTraining"]):
        raise ValueError(
            f"{root / 'dataset.json'}: numTraining is {meta['numTraining']} "
            f"but 'training' lists {len(meta['training'])} cases"
        )
    cases = []
    for index, entry in enumerate(meta["training"]):
        where = f"{root / 'dataset.json'} training[{index}]"
        if not {"image", "label"} <= set(entry):
            raise KeyError(f"{where}: needs 'image' and 'label' (has {sorted(entry)})")
        image = _relpath(entry["image"], root, f"{where} 'image'")
        subject = Path(image).name.removesuffix(".nii.gz")
        cases.append(
            {"image": image, "label": _relpath(entry["label"], root, f"{where} 'label'"), "subject": subject}
        )
    test = [
        {"image": _relpath(e if isinstance(e, str) else e["image"], root, "MSD test image")}
        for e in meta["test"]
    ]
    return segmentation_datalist(
        f"msd_{meta['name'].lower()}",
        f"Medical Segmentation Decathlon {meta['name']} ({meta.get('description', '')}); validation: seeded "
        f"{val_fraction:g} of the training cases (seed {seed})",
        root,
        {**split_groups(cases, val_fraction, seed), "test": test},
        {int(k): v for k, v in meta["labels"].items()},
        target,
        labels_dir,
        meta["modality"],
    )
