"""One class space for sources that each annotate a different subset of it (partial labels).

SuPreM (Li et al., ICLR 2024, Sec. 3) pre-trains on AbdomenAtlas 1.1: 25 anatomical structures unified
across public datasets that each label a different subset, plus pseudo-labelled tumour types. Every
source gets a *label map* from its own ids into the unified list and an *annotated set*: the unified
classes its protocol labels. A voxel labelled 0 by a source means "background or a class this source does
not annotate", which :mod:`common.losses.partial` and the partial metrics take into account.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# AbdomenAtlas 1.1's 25 structures (SuPreM's pre-training classes), in the order of its release.
ABDOMENATLAS_CLASSES = (
    "background",
    "aorta",
    "gall_bladder",
    "kidney_left",
    "kidney_right",
    "liver",
    "pancreas",
    "postcava",
    "spleen",
    "stomach",
    "adrenal_gland_left",
    "adrenal_gland_right",
    "bladder",
    "celiac_trunk",
    "colon",
    "duodenum",
    "esophagus",
    "femur_left",
    "femur_right",
    "hepatic_vessel",
    "intestine",
    "lung_left",
    "lung_right",
    "portal_vein_and_splenic_vein",
    "prostate",
    "rectum",
)
# Tumour classes the embedded data annotates (pyradiomics' lung CTs); SuPreM's optional tumour classes.
TUMOUR_CLASSES = ("lung_tumor",)
SUPREM_CLASSES = ABDOMENATLAS_CLASSES + TUMOUR_CLASSES

# Unified class -> the structure names that make it up in TotalSegmentator-style label maps
# (unlisted classes are their own single structure).
TOTALSEGMENTATOR_ALIASES = {
    "gall_bladder": ("gallbladder",),
    "postcava": ("inferior_vena_cava",),
    "bladder": ("urinary_bladder",),
    "intestine": ("small_bowel",),
    "lung_left": ("lung_upper_lobe_left", "lung_lower_lobe_left"),
    "lung_right": ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
}


def unified_id_map(
    id_to_name: Mapping[int, str],
    class_names: Sequence[str] = SUPREM_CLASSES,
    aliases: Mapping[str, Sequence[str]] = TOTALSEGMENTATOR_ALIASES,
) -> tuple[dict[int, int], list[str]]:
    """Map a source's ``{id: structure}`` into ``class_names``.

    Returns ``(source id -> class index, annotated class names)``: a unified class is annotated when the
    source names at least one of its structures. Source ids of structures outside the list map to 0.
    """
    name_to_ids: dict[str, list[int]] = {}
    for source_id, name in id_to_name.items():
        name_to_ids.setdefault(name, []).append(int(source_id))
    id_map: dict[int, int] = {}
    annotated = []
    for index, cls in enumerate(class_names):
        if index == 0:
            continue
        ids = [i for structure in aliases.get(cls, (cls,)) for i in name_to_ids.get(structure, ())]
        if ids:
            annotated.append(cls)
            id_map.update(dict.fromkeys(ids, index))
    return id_map, annotated


def apply_id_map(label: np.ndarray, id_map: Mapping[int, int]) -> np.ndarray:
    """Relabel ``label`` with ``{source id: class index}``; ids not in the map become 0."""
    label = np.asarray(label).astype(np.int64)
    if label.size and label.min() < 0:
        raise ValueError(f"label has negative values (min {label.min()})")
    lookup = np.zeros(max([*id_map, int(label.max(initial=0))]) + 1, dtype=np.uint8)
    for source_id, index in id_map.items():
        lookup[source_id] = index
    return lookup[label]


def annotated_mask(annotated: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
    """Boolean vector over ``class_names``: True for background and each annotated class."""
    unknown = sorted(set(annotated) - set(class_names))
    if unknown:
        raise KeyError(f"annotated classes {unknown} are not in the class list {list(class_names)}")
    mask = np.isin(np.asarray(class_names), list(annotated))
    mask[0] = True
    return mask


def covered_structures(
    class_names: Sequence[str] = SUPREM_CLASSES,
    aliases: Mapping[str, Sequence[str]] = TOTALSEGMENTATOR_ALIASES,
) -> set[str]:
    """Every structure name a class list covers, its classes' aliases included: a downstream class whose
    name is not in this set is *novel* to a network pre-trained on ``class_names``."""
    return {name for cls in class_names[1:] for name in (cls, *aliases.get(cls, ()))}
