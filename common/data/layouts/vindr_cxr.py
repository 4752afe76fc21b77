"""VinDr-CXR (Nguyen et al., Scientific Data 2022): ``train/<image_id>.dicom`` and ``test/...``;
``image_labels_train.csv`` (``image_id``, ``rad_id`` and one 0/1 column per label: 22 local findings and 6
global diagnoses incl. ``No finding``) with three independent radiologists per training image, and
``image_labels_test.csv`` with the consensus of five. Training labels are merged per image by ``merge``:
``"majority"`` (default, positive when at least two of the three readers marked it) or ``"any"``. The
label columns are read from the CSV header. ``validation`` is a seeded ``val_fraction`` of the training
images. With ``convert`` (default) each DICOM is converted to 2D NIfTI under ``root/images_dir``
(:mod:`.dicom`) and the item keeps the original as ``dicom``. The boxes of ``annotations_train.csv`` are
not read."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from .base import datalist, read_csv, require, split_groups
from .dicom import dicom_to_nifti

MERGES = ("majority", "any")
META_COLUMNS = ("image_id", "rad_id")


def _labels(path: Path, merge: str) -> tuple[list[str], dict[str, list[int]]]:
    rows = read_csv(path, ("image_id",))
    names = [c for c in rows[0] if c not in META_COLUMNS] if rows else []
    votes: dict[str, list[list[int]]] = defaultdict(list)
    for line, row in enumerate(rows, start=2):
        try:
            votes[row["image_id"]].append([int(float(row[n])) for n in names])
        except ValueError as err:
            raise ValueError(f"{path} line {line}: a label column is not 0/1 ({err})") from err

    def merged(readers: list[list[int]]) -> list[int]:
        need = len(readers) // 2 + 1 if merge == "majority" else 1
        return [int(sum(column) >= need) for column in zip(*readers, strict=True)]

    return names, {image_id: merged(readers) for image_id, readers in votes.items()}


def vindr_cxr(
    root: str | Path,
    merge: str = "majority",
    val_fraction: float = 0.1,
    seed: int = 0,
    convert: bool = True,
    images_dir: str = "medfm_images",
) -> dict:
    """Datalist of the VinDr-CXR folder ``root`` (holding ``train/``, ``test/`` and the label CSVs)."""
    if merge not in MERGES:
        raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
    root = Path(root)
    names, train = _labels(root / "image_labels_train.csv", merge)
    splits = {"training": [], "test": []}
    for key, folder, labels in (("training", "train", train), ("test", "test", None)):
        if labels is None:
            test_csv = root / "image_labels_test.csv"
            test_names, labels = _labels(test_csv, "any") if test_csv.is_file() else (names, {})
            if test_names != names:
                raise KeyError(f"{test_csv}: label columns differ from image_labels_train.csv's")
        for image_id, findings in tqdm(sorted(labels.items()), desc=f"VinDr-CXR {folder}", mininterval=1):
            dicom = f"{folder}/{image_id}.dicom"
            require(root / dicom, f"image of {image_id}")
            image = dicom_to_nifti(root, dicom, images_dir) if convert else dicom
            splits[key].append({"image": image, "dicom": dicom, "subject": image_id, "findings": findings})
    return datalist(
        "vindr_cxr",
        f"VinDr-CXR image-level labels, training readers merged by {merge}; test: 5-reader consensus",
        finding_names=names,
        label_merge=merge,
        **split_groups(splits["training"], val_fraction, seed),
        test=splits["test"],
    )
