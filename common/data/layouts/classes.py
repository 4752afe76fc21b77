"""Public CT datasets' organ names mapped onto the bundles' class spaces.

Names are first made canonical (lower case, ``_`` for spaces, the synonyms below) in TotalSegmentator's
naming, which :data:`~common.data.labels.MULTIORGAN_CT_CLASSES` uses and
:data:`~common.data.partial_labels.TOTALSEGMENTATOR_ALIASES` maps onto SuPreM's classes. A target class is
annotated by a dataset when the dataset names at least one of the structures that make it up.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..labels import MULTIORGAN_CT_CLASSES
from ..partial_labels import SUPREM_CLASSES, TOTALSEGMENTATOR_ALIASES, unified_id_map

# dataset spelling -> TotalSegmentator name (BTCV's dataset_0.json abbreviations, AMOS' "arota", FLARE22)
SYNONYMS = {
    "rkid": "kidney_right",
    "lkid": "kidney_left",
    "right_kidney": "kidney_right",
    "left_kidney": "kidney_left",
    "gall": "gallbladder",
    "gall_bladder": "gallbladder",
    "eso": "esophagus",
    "sto": "stomach",
    "arota": "aorta",
    "ivc": "inferior_vena_cava",
    "postcava": "inferior_vena_cava",
    "veins": "portal_vein_and_splenic_vein",
    "rad": "adrenal_gland_right",
    "lad": "adrenal_gland_left",
    "right_adrenal_gland": "adrenal_gland_right",
    "left_adrenal_gland": "adrenal_gland_left",
    "bladder": "urinary_bladder",
    "intestine": "small_bowel",
}

# target datalist -> (class list, target class -> canonical structure names that make it up)
TARGETS = {
    "multiorgan_ct": (MULTIORGAN_CT_CLASSES, {}),
    "suprem_ct": (
        SUPREM_CLASSES,
        # AbdomenAtlas' own whole-lung masks count as well as TotalSegmentator's lobes
        {
            **TOTALSEGMENTATOR_ALIASES,
            **{c: (c, *TOTALSEGMENTATOR_ALIASES[c]) for c in ("lung_left", "lung_right")},
        },
    ),
}


def canonical(name: str) -> str:
    """``"Right Kidney"`` -> ``"kidney_right"``: the TotalSegmentator name of a dataset's class name."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    key = key.split("_(")[0]  # FLARE22-style "inferior_vena_cava_(ivc)"
    return SYNONYMS.get(key, key)


def class_maps(own_labels: Mapping[int, str]) -> dict[str, dict]:
    """For each target datalist: ``{"id_map": {dataset id: target class index}, "annotated": [...]}``."""
    canonical_labels = {int(i): canonical(n) for i, n in own_labels.items() if int(i) != 0}
    maps = {}
    for target, (classes, aliases) in TARGETS.items():
        id_map, annotated = unified_id_map(canonical_labels, classes, aliases)
        maps[target] = {"id_map": {str(k): v for k, v in sorted(id_map.items())}, "annotated": annotated}
    return maps
