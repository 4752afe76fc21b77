"""Label maps the bundles read, written at preprocess time: per-structure masks merged into one map
(AbdomenAtlas, TotalSegmentator) and label maps relabelled into a bundle's class space.

Why at preprocess time and not as an on-the-fly transform: the bundles' pipelines read one ``label`` file
per item and :func:`common.data.load_datalist` checks it (values, shape, affine) before training; a
TotalSegmentator subject has 104-117 mask files, which would otherwise be opened again every epoch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from ...atomic import atomic_path
from ..partial_labels import apply_id_map
from .base import datalist, relative
from .classes import TARGETS, class_maps


def merge_masks(mask_files: Iterable[tuple[int, Path]]) -> nib.Nifti1Image:
    """One uint8 label map from ``(class index, binary mask file)`` pairs: several masks may share an
    index, index 0 masks are not drawn, a later pair wins where masks overlap. ValueError naming the mask
    whose grid differs from the first one's."""
    label, affine, first = None, None, None
    for index, path in mask_files:
        mask = nib.load(path)
        if label is None:
            label, affine, first = np.zeros(mask.shape[:3], np.uint8), mask.affine, path
        elif mask.shape[:3] != label.shape or not np.allclose(mask.affine, affine, atol=1e-3):
            raise ValueError(f"mask {path}: shape {mask.shape} or affine unlike {first}'s ({label.shape})")
        if index:
            label[np.asanyarray(mask.dataobj).reshape(label.shape) > 0] = index
    if label is None:
        raise ValueError("no mask files to merge")
    return nib.Nifti1Image(label, affine)


def relabel(label_file: Path, id_map: Mapping[int, int]) -> nib.Nifti1Image:
    """``label_file`` with ``{dataset id: class index}`` applied (other ids -> 0), same grid."""
    image = nib.load(label_file)
    return nib.Nifti1Image(apply_id_map(np.asanyarray(image.dataobj), id_map), image.affine)


def _save(image: nib.Nifti1Image, out: Path) -> None:
    with atomic_path(out) as tmp:
        nib.save(image, tmp)


def segmentation_datalist(
    name: str,
    description: str,
    root: Path,
    splits: Mapping[str, list[dict]],
    own_labels: Mapping[int, str],
    target: str | None = None,
    labels_dir: str = "medfm_labels",
    modality: Mapping[str, str] | None = None,
) -> dict:
    """The datalist of a labelled segmentation layout, in the dataset's own class ids or, with ``target``
    (``multiorgan_ct`` or ``suprem_ct``), in that bundle datalist's class space.

    Items carry ``label`` (a label-map file, relative to ``root``) or ``masks`` (``{dataset id: mask
    file}``). Label maps are written to ``root/labels_dir/<name>[_<target>]/`` when masks must be merged or
    ids relabelled. The result keeps the dataset's own ``dataset_labels`` and every target's
    ``class_maps``; with a target, ``labels`` is the target's class list and ``sources`` /
    ``source`` give SuPreM's partial-label sets.
    """
    maps = class_maps(own_labels)
    if target is not None and target not in TARGETS:
        raise ValueError(f"target must be one of {sorted(TARGETS)} or None, got {target!r}")
    id_map = {int(k): v for k, v in maps[target]["id_map"].items()} if target else None
    out_dir = root / labels_dir / (f"{name}_{target}" if target else name)
    todo = [
        item for items in splits.values() for item in items if "masks" in item or (target and "label" in item)
    ]
    for item in tqdm(todo, desc=f"{name}: label maps", disable=not todo):
        if "masks" in item:
            new_id = (lambda i: id_map.get(i, 0)) if id_map else (lambda i: i)
            image = merge_masks(sorted((new_id(int(i)), root / f) for i, f in item.pop("masks").items()))
        else:
            image = relabel(root / item["label"], id_map)
        out = out_dir / f"{item['subject']}.nii.gz"
        _save(image, out)
        item["label"] = relative(out, root)
    own = {"0": "background", **{str(i): n for i, n in sorted(own_labels.items(), key=lambda kv: int(kv[0]))}}
    content = {"modality": dict(modality or {"0": "CT"}), "dataset_labels": own, "class_maps": maps}
    if target:
        classes = TARGETS[target][0]
        content["labels"] = {str(i): n for i, n in enumerate(classes)}
        content["sources"] = {name: {"annotated": maps[target]["annotated"], "description": description}}
        for items in splits.values():
            for item in items:
                item["source"] = name
    else:
        content["labels"] = own
    return datalist(name, description, **content, **splits)
