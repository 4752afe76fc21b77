"""Per-source sampling weights (issue 18 item 4, common.data.sampling): each source makes up its weight's
share of the draws whatever its size, store records weigh by their datalist fields, bad settings name the
item or the source, and the train configs (single process and multi_gpu_train) build the samplers."""

import socket
from collections import Counter

import pytest
import torch
import torch.distributed as dist
from monai.bundle import ConfigParser
from monai.data import Dataset, DistributedSampler, DistributedWeightedRandomSampler
from torch.utils.data import RandomSampler, WeightedRandomSampler

from common.data.sampling import source_item_weights, train_sampler
from common.evaluation.bundle_runs import bundle_dir

ITEMS = [{"image": f"a{i}.nii.gz", "source": "A"} for i in range(2)] + [
    {"image": f"b{i}.nii.gz", "source": "B"} for i in range(18)
]


def source_shares(sampler, items, draws: int) -> dict[str, float]:
    """The share of each source among ``draws`` indices drawn from ``sampler`` (epoch after epoch)."""
    drawn = []
    while len(drawn) < draws:
        drawn.extend(items[i]["source"] for i in sampler)
    counts = Counter(drawn[:draws])
    return {name: count / draws for name, count in counts.items()}


def test_item_weight_is_the_source_weight_over_its_size():
    """Hand case: A (2 items) weight 3, B (18 items) weight 1 -> 3/2 per A item, 1/18 per B item."""
    weights = source_item_weights(ITEMS, {"A": 3, "B": 1})
    assert weights == [1.5, 1.5] + [1 / 18] * 18


def test_each_source_makes_up_its_weights_share_of_the_draws():
    """2 items of A and 18 of B at weights 1:1 are drawn half and half (uniform shuffling: 10 % and 90 %);
    at 1:3 a quarter and three quarters; a weight of 0 leaves a source out."""
    torch.manual_seed(0)
    for weights, expected in (({"A": 1, "B": 1}, 0.5), ({"A": 1, "B": 3}, 0.25), ({"A": 0, "B": 1}, 0.0)):
        sampler = train_sampler(Dataset(ITEMS), weights)
        assert isinstance(sampler, WeightedRandomSampler) and len(sampler) == len(ITEMS)
        shares = source_shares(sampler, ITEMS, 20_000)
        assert abs(shares.get("A", 0.0) - expected) < 0.015, (weights, shares)
    uniform = source_shares(train_sampler(Dataset(ITEMS)), ITEMS, 2_000)
    assert uniform == {"A": 0.1, "B": 0.9}


def test_store_records_weigh_by_their_datalist_fields():
    records = [
        {"image": "items/0000.b2nd", "fields": {"modality": "CT"}},
        {"image": "items/0001.b2nd", "fields": {"modality": "MR"}},
    ]
    assert source_item_weights(records, {"CT": 1, "MR": 4}, key="modality") == [1.0, 4.0]


def test_bad_sampling_settings_name_the_item_or_the_source():
    with pytest.raises(
        KeyError, match=r"item 1 \(b.nii.gz\) has no 'source' field .* keys: \['image', 'subject'\]"
    ):
        source_item_weights(
            [{"image": "a.nii.gz", "source": "A"}, {"image": "b.nii.gz", "subject": "s"}], {"A": 1}
        )
    with pytest.raises(
        ValueError, match=r"no weight for the 'source' value\(s\) \['B'\] .* 0 to leave it out"
    ):
        source_item_weights(ITEMS, {"A": 1})
    with pytest.raises(ValueError, match=r"no item has 'source' \['C'\]; the data has \['A', 'B'\]"):
        source_item_weights(ITEMS, {"A": 1, "B": 1, "C": 1})
    for weights in ({"A": -1, "B": 1}, {"A": 0, "B": 0}, {"A": float("nan"), "B": 1}):
        with pytest.raises(ValueError, match="must be >= 0 and not all 0"):
            source_item_weights(ITEMS, weights)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_train_configs_build_the_samplers(prepared_data):
    """simmim's train.json: a shuffling RandomSampler by default, CT:MR 3:1 by modality when asked; its
    multi_gpu_train.json (one gloo process): MONAI's DistributedSampler, or its weighted one."""
    configs = bundle_dir("simmim_ssl_pretrain") / "configs"
    weighted = {"sampling_weights": {"CT": 3, "MR": 1}, "sampling_key": "modality", "cache_rate": 0.0}

    def loader(files, **overrides):
        parser = ConfigParser()
        parser.read_config([str(configs / name) for name in files])
        parser.update({"cache_rate": 0.0, "num_workers": 0, **overrides})
        return parser.get_parsed_content("train#dataloader")

    assert type(loader(["train.json"]).sampler) is RandomSampler
    default_loader = loader(["train.json"], **weighted)
    sampler, items = default_loader.sampler, default_loader.dataset.data
    assert isinstance(sampler, WeightedRandomSampler)
    counts = Counter(item["modality"] for item in items)
    assert set(counts) == {"CT", "MR"}
    expected = [(3.0 if item["modality"] == "CT" else 1.0) / counts[item["modality"]] for item in items]
    assert torch.allclose(sampler.weights, torch.tensor(expected, dtype=torch.double))

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        multi = ["train.json", "multi_gpu_train.json"]
        assert type(loader(multi).sampler) is DistributedSampler
        sampler = loader(multi, **weighted).sampler
        assert isinstance(sampler, DistributedWeightedRandomSampler) and sampler.weights == expected
    finally:
        dist.destroy_process_group()
