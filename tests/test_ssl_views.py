"""Views for self-supervised pre-training: modality normalisation and 3D multi-crop on real volumes."""

import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist
from monai.transforms import Compose

from common.bundle import REPO_ROOT
from common.transforms import MultiCropd, NormalizeByModalityd, pool_transforms, ssl_transforms

POOL = str(REPO_ROOT / "data_lists" / "pool_ct_mr.json")


def test_normalisation_by_modality_maps_to_unit_range():
    hu = torch.tensor([[-2000.0, -1000.0, 0.0, 1000.0, 3000.0]])
    out = NormalizeByModalityd("image")({"image": hu, "modality": "CT"})["image"]
    assert out.tolist() == [[0.0, 0.0, 0.5, 1.0, 1.0]]
    mr = torch.linspace(0, 500, 1001)[None]
    out = NormalizeByModalityd("image")({"image": mr, "modality": "MR"})["image"]
    assert out.min() == 0.0 and out.max() == 1.0 and 0.45 < out.median() < 0.55


def test_multicrop_views_have_their_sizes_and_are_seeded():
    image = torch.rand(1, 40, 50, 30)
    crop = MultiCropd("image", num_global=2, global_size=32, num_local=3, local_size=16)
    crop.set_random_state(0)
    views = crop({"image": image, "modality": "CT"})
    assert sorted(views) == ["global_0", "global_1", "local_0", "local_1", "local_2", "modality"]
    assert views["global_0"].shape == (1, 32, 32, 32) and views["local_2"].shape == (1, 16, 16, 16)
    assert not torch.equal(views["global_0"], views["global_1"])
    again = MultiCropd("image", num_global=2, global_size=32, num_local=3, local_size=16)
    again.set_random_state(0)
    assert torch.equal(again({"image": image})["local_1"], views["local_1"])


def test_multicrop_without_augmentation_is_a_resized_region():
    image = torch.arange(8.0**3).view(1, 8, 8, 8)
    crop = MultiCropd("image", num_global=1, global_size=8, global_scale=(1.0, 1.0), augment=False)
    assert torch.equal(crop({"image": image})["global_0"], image)  # scale 1: the whole volume, unchanged
    with pytest.raises(ValueError, match="spatial dims"):
        crop({"image": torch.rand(1, 8, 8)})


def test_pool_pipeline_on_real_ct_and_mr(prepared_data):
    items = load_decathlon_datalist(POOL, True, "training", str(prepared_data))
    ct = next(i for i in items if i["modality"] == "CT")
    mr = next(i for i in items if i["modality"] == "MR")
    for item in (ct, mr):
        image = Compose(pool_transforms(pixdim=6.0))(item)["image"]
        assert image.ndim == 4 and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    pipeline = ssl_transforms(num_global=2, global_size=32, num_local=2, local_size=32, pixdim=6.0)
    pipeline.set_random_state(3)
    views = pipeline(ct)
    assert {k: tuple(v.shape) for k, v in views.items() if k.startswith(("global", "local"))} == {
        "global_0": (1, 32, 32, 32),
        "global_1": (1, 32, 32, 32),
        "local_0": (1, 32, 32, 32),
        "local_1": (1, 32, 32, 32),
    }
    assert all(np.isfinite(v.numpy()).all() for k, v in views.items() if k.startswith("global"))


def test_views_are_plain_tensors_that_collate_into_a_batch():
    from monai.data import list_data_collate

    crop = MultiCropd("image", num_global=2, global_size=16)
    batch = list_data_collate([crop({"image": torch.rand(1, 20, 20, 20)}) for _ in range(4)])
    assert batch["global_0"].shape == (4, 1, 16, 16, 16) and type(batch["global_1"]) is torch.Tensor


def test_flips_can_be_turned_off_while_intensity_augmentation_stays():
    image = torch.rand(1, 12, 12, 12)
    whole = {"num_global": 1, "global_size": 12, "global_scale": (1.0, 1.0)}
    for seed in range(8):
        crop = MultiCropd("image", **whole, flip=False)
        crop.set_random_state(seed)
        view = crop({"image": image})["global_0"]
        # an affine intensity change (plus rare noise/blur) of the unflipped volume: strongly correlated
        assert torch.corrcoef(torch.stack([view.flatten(), image.flatten()]))[0, 1] > 0.8
