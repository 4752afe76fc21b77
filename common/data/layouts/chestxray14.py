"""NIH ChestX-ray14 (Wang et al., CVPR 2017): ``Data_Entry_2017.csv`` (or the 2020 update's
``Data_Entry_2017_v2020.csv``; ``Image Index``, ``Finding Labels``
``|``-separated or ``No Finding``, ``Patient ID``, ``View Position``, ...), ``train_val_list.txt`` /
``test_list.txt`` (the official patient-wise split) and the PNGs in ``images_001/images/`` ..
``images_012/images/``. The labels are text-mined (no uncertain class). ``validation`` is a seeded
``val_fraction`` of the train_val patients, so no patient is on both sides."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from .base import datalist, read_csv, require, split_groups

CHESTXRAY14_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)


def _image_index(root: Path) -> dict[str, str]:
    """PNG file name -> path relative to ``root``, over every ``images*/images/`` folder."""
    files = tqdm(
        sorted(root.glob("images*/images/*.png")), desc="scanning ChestX-ray14 images", mininterval=1
    )
    return {p.name: str(p.relative_to(root)) for p in files}


def chestxray14(root: str | Path, val_fraction: float = 0.1, seed: int = 0) -> dict:
    """Datalist of the ChestX-ray14 folder ``root``."""
    root = Path(root)
    entries_csv = root / "Data_Entry_2017.csv"
    if not entries_csv.is_file() and (root / "Data_Entry_2017_v2020.csv").is_file():
        entries_csv = root / "Data_Entry_2017_v2020.csv"
    rows = read_csv(entries_csv, ("Image Index", "Finding Labels", "Patient ID", "View Position"))
    official = {
        key: set(require(root / name, "split list").read_text().split())
        for key, name in (("train_val", "train_val_list.txt"), ("test", "test_list.txt"))
    }
    images = _image_index(root)
    items = {}
    for line, row in enumerate(rows, start=2):
        names = set(row["Finding Labels"].split("|")) - {"No Finding"}
        unknown = sorted(names - set(CHESTXRAY14_FINDINGS))
        if unknown:
            raise ValueError(f"{entries_csv} line {line}: 'Finding Labels' has unknown findings {unknown}")
        if row["Image Index"] not in images:
            raise FileNotFoundError(
                f"{entries_csv} line {line}: image {row['Image Index']} not in any images*/images/"
            )
        items[row["Image Index"]] = {
            "image": images[row["Image Index"]],
            "subject": row["Patient ID"],
            "view": row["View Position"],
            "findings": [int(f in names) for f in CHESTXRAY14_FINDINGS],
        }
    listed = official["train_val"] | official["test"]
    missing = sorted(listed - set(items))
    if missing:
        raise KeyError(f"{root}: split lists name images absent from Data_Entry_2017.csv: {missing[:5]}")
    train_val = [items[n] for n in sorted(official["train_val"])]
    return datalist(
        "chestxray14",
        "NIH ChestX-ray14, 14 text-mined findings; official test list; validation: seeded "
        f"{val_fraction:g} of the train_val patients (seed {seed})",
        finding_names=list(CHESTXRAY14_FINDINGS),
        **split_groups(train_val, val_fraction, seed),
        test=[items[n] for n in sorted(official["test"])],
    )
