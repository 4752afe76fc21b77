"""``cache_memory_gb`` (issue 18 item 3): the NIfTI path caches the items a stated memory budget holds,
each estimated from its headers as its volumes resampled to the pipeline's spacing, as float32."""

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

from common.data.train_data import budget_cache_num, pipeline_spacing, resampled_bytes
from common.evaluation.bundle_runs import bundle_dir
from common.transforms import ssl_transforms


def _volume(path, shape, spacing):
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.diag([*spacing, 1.0])), str(path))
    return str(path)


def test_resampled_bytes_hand_case(tmp_path):
    """10 x 20 x 30 voxels of 1 x 1 x 2 mm at 2 mm: 5 x 10 x 30 voxels, 4 bytes each, image and label."""
    image = _volume(tmp_path / "image.nii.gz", (10, 20, 30), (1.0, 1.0, 2.0))
    label = _volume(tmp_path / "label.nii.gz", (10, 20, 30), (1.0, 1.0, 2.0))
    assert resampled_bytes({"image": image}, (2.0, 2.0, 2.0)) == 5 * 10 * 30 * 4
    assert resampled_bytes({"image": image, "label": label}, [2.0]) == 2 * 5 * 10 * 30 * 4
    assert resampled_bytes({"image": image}, None) == 10 * 20 * 30 * 4  # no resampling: its own grid
    assert resampled_bytes({"image": image}, [4.0, 2.0]) == 3 * 10 * 30 * 4  # padded with the last value
    items = [{"image": image}] * 3
    one = 6000 / 2**30
    assert [budget_cache_num(items, gb, (2.0, 2.0, 2.0)) for gb in (0.0, one, 2.5 * one, 3 * one, 1.0)] == [
        0,
        1,
        2,
        3,
        3,
    ]


def test_the_pipelines_spacing_is_read_from_its_resampling_step():
    assert pipeline_spacing(ssl_transforms(pixdim=6.0)) == (6.0, 6.0, 6.0)
    assert pipeline_spacing(ssl_transforms(pixdim=None)) is None


@pytest.mark.parametrize("fit", [0, 3])
def test_train_config_caches_what_the_budget_holds(prepared_data, fit):
    """simmim's train.json at 6 mm with a budget of its first ``fit`` items (their sizes by nibabel's
    headers): exactly those are cached."""
    parser = ConfigParser()
    parser.read_config(str(bundle_dir("simmim_ssl_pretrain") / "configs" / "train.json"))
    parser.update({"pixdim": 6.0, "num_workers": 0})
    datalist = parser.get_parsed_content("datalist")
    sizes = []
    for item in datalist[:fit]:
        header = nib.load(item["image"]).header
        shape, zooms = np.asarray(header.get_data_shape()[:3]), np.asarray(header.get_zooms()[:3])
        sizes.append(int(np.prod(np.ceil(shape * zooms / 6.0))) * 4)
    parser.update({"cache_memory_gb": (sum(sizes) + 1) / 2**30})
    dataset = parser.get_parsed_content("train#dataset")
    assert dataset.cache_num == fit and len(dataset) == len(datalist) > fit
