"""The 3D train configs read a preprocessed patch store when given ``store_manifest``
(common.data.train_data): SSL views equal the NIfTI pipeline's for the same random draws, the segmentation
and partial-label pipelines crop by label from the store, SimMIM and the multi-organ segmentation train
through ``monai.bundle`` from a store, and a store preprocessed with other settings is refused."""

import json

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import CacheDataset, Dataset

from common.bundle import REPO_ROOT, class_names
from common.data.patch_dataset import RandStorePatchd
from common.data.preprocess import preprocess
from common.data.train_data import check_store_settings, train_dataset
from common.evaluation.bundle_runs import bundle_dir, workflow
from common.transforms import ssl_transforms

POOL = [  # a CT and an MR of data_lists/pool_ct_mr.json: the two intensity schemes of the SSL pool
    {"image": "ct_multiorgan/totalseg_B_ct.nii.gz", "modality": "CT", "source": "TotalSegmentator B"},
    {"image": "pool/totalseg_mr.nii.gz", "modality": "MR", "source": "TotalSegmentator MR"},
]
DATA_LISTS = REPO_ROOT / "data_lists"
SSL_SMOKE = {"pixdim": 6.0, "global_size": 32, "num_workers": 0}  # simmim's smoke.json sizes


def _datalist(path, items, key="training"):
    path.write_text(json.dumps({key: items}))
    return path


@pytest.fixture(scope="module")
def pool_store(prepared_data, tmp_path_factory):
    """The two pool volumes as a datalist and as a float32 store at 6 mm (the SSL pool's scheme)."""
    tmp = tmp_path_factory.mktemp("pool_store")
    datalist = _datalist(tmp / "pool.json", POOL)
    out = tmp / "store"
    summary = preprocess(
        str(datalist), out_dir=str(out), intensity="modality", pixdim=6.0, dtype="float32", label_key=None
    )
    assert len(summary["done"]) == 2 and summary["manifest"]
    return datalist, out


def _train_dataset(bundle, **overrides):
    parser = ConfigParser()
    parser.read_config(str(bundle_dir(bundle) / "configs" / "train.json"))
    parser.update(overrides)
    return parser.get_parsed_content("train#dataset")


def test_ssl_views_from_the_store_equal_the_nifti_views(prepared_data, pool_store):
    """simmim's train#dataset from NIfTI (CacheDataset) and from the store (Dataset) over the same two
    volumes: the same seed gives the same views, augmented, to float32 precision, with the same fields."""
    datalist, store = pool_store
    common = {"datalist_file": str(datalist), "dataset_dir": str(prepared_data), **SSL_SMOKE}
    nifti = _train_dataset("simmim_ssl_pretrain", **common)
    from_store = _train_dataset("simmim_ssl_pretrain", **common, store_manifest=str(store))
    assert isinstance(nifti, CacheDataset) and type(from_store) is Dataset and len(from_store) == 2
    for seed in (0, 1):
        nifti.transform.set_random_state(seed)
        from_store.transform.set_random_state(seed)
        for index in range(2):
            expected, got = nifti[index], from_store[index]
            # the NIfTI items also keep CropForegroundd's foreground_{start,end}_coord, which nothing reads
            assert set(got) == {"global_0", "modality", "source"} and set(got) <= set(expected)
            assert got["modality"] == POOL[index]["modality"]
            assert got["global_0"].shape == (1, 32, 32, 32)
            assert torch.allclose(got["global_0"], expected["global_0"], atol=1e-6)
    nifti.transform.set_random_state(0)
    other = nifti[0]["global_0"]
    nifti.transform.set_random_state(1)
    assert not torch.allclose(other, nifti[0]["global_0"])  # the seed matters: the equality is not trivial


def test_store_preprocessed_with_other_settings_is_refused(prepared_data, pool_store, tmp_path):
    datalist, store = pool_store
    with pytest.raises(RuntimeError) as err:  # MONAI wraps errors of instantiating components
        _train_dataset("simmim_ssl_pretrain", **{**SSL_SMOKE, "pixdim": 5.0}, store_manifest=str(store))
    message = str(err.value.__cause__)
    assert f"{store / 'manifest.json'}: the store was preprocessed with pixdim=6.0" in message
    assert "this config uses pixdim=5.0" in message
    transform = ssl_transforms(pixdim=6.0, ct_window=(-500.0, 500.0), data_source="store")
    with pytest.raises(ValueError, match="ct_window=None, this config uses ct_window=.-500"):
        train_dataset("store", transform, manifest=str(store))
    with pytest.raises(ValueError, match="needs store_manifest"):
        train_dataset("store", transform)
    with pytest.raises(ValueError, match="has no step that reads the store"):
        train_dataset("store", ssl_transforms(pixdim=6.0), manifest=str(store))
    with pytest.raises(ValueError, match="unknown data_source 'zarr'"):
        train_dataset("zarr", transform, manifest=str(store))


def test_store_settings_compare_as_the_pipelines_apply_them():
    """Hand cases: a scalar spacing is the same on every axis; an unset window is the scheme's default."""
    path = "D/manifest.json"
    pipeline = {"pixdim": 2.0, "intensity": "modality", "ct_window": None, "num_classes": None}
    check_store_settings(path, pipeline, {"pixdim": [2, 2, 2], "ct_window": (-1000, 1000)})
    ct = {"pixdim": [1.5, 1.5, 2.0], "intensity": "ct", "ct_window": None, "num_classes": 27}
    check_store_settings(path, ct, {"pixdim": (1.5, 1.5, 2.0), "ct_window": [-175, 250], "num_classes": 27})
    with pytest.raises(ValueError, match=r"D/manifest.json: .* with ct_window=None, this config uses"):
        check_store_settings(path, ct, {"ct_window": (-1000, 1000)})
    with pytest.raises(
        ValueError, match="preprocessed with num_classes=None, this config uses num_classes=27"
    ):
        check_store_settings(path, {**ct, "num_classes": None}, {"num_classes": 27})
    with pytest.raises(ValueError, match="preprocessed with intensity='ct', this config uses intensity='mr'"):
        check_store_settings(path, ct, {"intensity": "mr"})


def test_simmim_smoke_trains_from_the_store(pool_store, tmp_path):
    """simmim's smoke run through monai.bundle with store_manifest: trains and writes its checkpoint."""
    _, store = pool_store
    flow = workflow(
        "simmim_ssl_pretrain", ["train.json", "smoke.json"], "training", tmp_path, store_manifest=str(store)
    )
    assert flow.parser.get_parsed_content("data_source") == "store"
    assert type(flow.parser.get_parsed_content("train#dataset")) is Dataset
    flow.run()
    flow.finalize()
    assert (tmp_path / "models" / "model.pt").is_file()
    assert flow.parser.get_parsed_content("train#trainer").state.iteration == 1


@pytest.fixture(scope="module")
def multiorgan_store(prepared_data, tmp_path_factory):
    """multiorgan_ct_segmentation's smoke training volume (the last training item) preprocessed as its
    smoke config trains: 3 mm, CT window [-175, 250], 27 classes."""
    tmp = tmp_path_factory.mktemp("multiorgan_store")
    items = json.loads((DATA_LISTS / "multiorgan_ct.json").read_text())["training"]
    datalist = _datalist(tmp / "multiorgan.json", items[-1:])
    out = tmp / "store"
    preprocess(str(datalist), out_dir=str(out), pixdim=3.0, ct_window=[-175, 250], num_classes=27)
    return out


def test_segmentation_smoke_trains_from_class_balanced_store_crops(multiorgan_store, tmp_path):
    """The segmentation config crops from the store by class (its crop mode with num_classes), each crop
    through the same random intensity tail, and its smoke run trains and writes its final checkpoint."""
    flow = workflow(
        "multiorgan_ct_segmentation",
        ["train.json", "smoke.json"],
        "training",
        tmp_path,
        store_manifest=str(multiorgan_store),
        val_interval=2,  # one epoch: no sliding-window validation (NIfTI, unchanged), the slow part
    )
    dataset = flow.parser.get_parsed_content("train#dataset")
    crop, *tail = dataset.transform.transforms
    assert isinstance(crop, RandStorePatchd) and crop.mode == "classes" and crop.roi_size == (64, 64, 64)
    assert [type(t).__name__ for t in tail] == ["EnsureTyped", "RandScaleIntensityd", "RandShiftIntensityd"]
    dataset.transform.set_random_state(0)
    samples = dataset[0]
    assert len(samples) == 1 and samples[0]["image"].shape == samples[0]["label"].shape == (1, 64, 64, 64)
    assert samples[0]["label"].max() > 0 and samples[0]["subject"] == "totalseg_B"
    flow.run()
    flow.finalize()
    assert (tmp_path / "models" / "model_final.pt").is_file()
    assert flow.parser.get_parsed_content("train#trainer").state.iteration == 1


def test_partial_labels_annotate_store_crops(prepared_data, tmp_path):
    """suprem_pretrain from a store: each crop carries its source's annotated classes, as from NIfTI."""
    items = json.loads((DATA_LISTS / "suprem_ct.json").read_text())["training"]
    datalist = _datalist(tmp_path / "suprem.json", items[1:2])
    out = tmp_path / "store"
    num_classes = len(class_names(DATA_LISTS / "suprem_ct.json"))
    preprocess(str(datalist), out_dir=str(out), pixdim=4.0, num_classes=num_classes)
    overrides = {"pixdim": [4.0, 4.0, 4.0], "roi_size": [32, 32, 32], "num_samples": 2}
    nifti = _train_dataset("suprem_pretrain", **overrides, cache_rate=0.0, num_workers=0)
    from_store = _train_dataset("suprem_pretrain", **overrides, store_manifest=str(out))
    expected = nifti[1][0]["annotated"]
    samples = from_store[0]
    assert len(samples) == 2 and all(torch.equal(s["annotated"], expected) for s in samples)
    assert samples[0]["source"] == "totalsegmentator" and not expected.all()


def test_store_records_are_sampled_by_their_datalist_fields(pool_store):
    """sampling_weights over a store weigh each record by the datalist field it kept (here its modality)."""
    _, store = pool_store
    parser = ConfigParser()
    parser.read_config(str(bundle_dir("simmim_ssl_pretrain") / "configs" / "train.json"))
    parser.update({**SSL_SMOKE, "store_manifest": str(store)})
    parser.update({"sampling_weights": {"CT": 1, "MR": 3}, "sampling_key": "modality"})
    loader = parser.get_parsed_content("train#dataloader")
    assert [r["fields"]["modality"] for r in loader.dataset.data] == ["CT", "MR"]
    assert loader.sampler.weights.tolist() == [1.0, 3.0]
