"""The preprocessed patch store (common.data.store, common.data.preprocess) and the crops read from it
(common.data.patch_dataset), on embedded CT and MR volumes at 4-6 mm."""

import json
import os

import blosc2
import fire
import nibabel as nib
import numpy as np
import pytest
import torch
from monai import transforms as mt
from monai.data import DataLoader, list_data_collate

from common.data.patch_dataset import PatchDataset, RandStorePatchd, store_records
from common.data.preprocess import command, item_id, preprocess
from common.data.store import (
    bounding_box,
    intensity_stats,
    item_paths,
    load_manifest,
    read_patch,
    sample_locations,
)
from common.transforms.builders import segmentation_transforms
from common.transforms.ssl import pool_transforms

CT_A = {
    "image": "ct_multiorgan/totalseg_A_ct.nii.gz",
    "label": "ct_multiorgan/totalseg_A_label.nii.gz",
    "subject": "totalseg_A",
}
CT_B = {
    "image": "ct_multiorgan/totalseg_B_ct.nii.gz",
    "label": "ct_multiorgan/totalseg_B_label.nii.gz",
    "subject": "totalseg_B",
}
MR = {"image": "pool/totalseg_mr.nii.gz", "modality": "MR"}
CT_POOL = {"image": "ct_multiorgan/totalseg_A_ct.nii.gz", "modality": "CT"}


def _datalist(tmp_path, items, name="datalist.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"training": items}))
    return path


@pytest.fixture(scope="module")
def ct_store(prepared_data, tmp_path_factory):
    """The store directory of two labelled CTs at 4 mm, float32."""
    tmp = tmp_path_factory.mktemp("ct_store")
    out = tmp / "store"
    summary = preprocess(
        str(_datalist(tmp, [CT_A, CT_B])),
        out_dir=str(out),
        dataset_dir=str(prepared_data),
        pixdim=4.0,
        dtype="float32",
        num_classes=27,
    )
    assert len(summary["done"]) == 2 and not summary["failed"]
    return out


def _nifti_crop(prepared_data, item, keys, deterministic, roi, start):
    """Today's pipeline: the deterministic transforms, SpatialPadd to roi, then a crop at ``start`` given in
    the unpadded volume's coordinates."""
    data = mt.Compose(deterministic)(
        {k: str(prepared_data / item[k]) if k in keys else v for k, v in item.items()}
    )
    shape = data["image"].shape[1:]
    before = [(max(s, r) - s) // 2 for s, r in zip(shape, roi, strict=True)]
    padded = [s + b for s, b in zip(start, before, strict=True)]
    return mt.Compose(
        [
            mt.SpatialPadd(keys, spatial_size=roi),
            mt.SpatialCropd(
                keys, roi_start=padded, roi_end=[p + r for p, r in zip(padded, roi, strict=True)]
            ),
        ]
    )(data)


def test_store_crop_equals_nifti_pipeline_crop_float32(prepared_data, ct_store):
    """Same crop location -> the identical tensor and affine as today's segmentation pipeline (float32; its
    deterministic part is the ``val`` stage's: load, orient, resample, CT window, crop to the body), for
    crops inside the volume and crops reaching into SpatialPadd's padding (totalseg A is 23 slices thick
    at 4 mm, the roi 32)."""
    roi = (48, 40, 32)
    records = load_manifest(ct_store)["items"]
    deterministic = segmentation_transforms("val", pixdim=4.0).transforms
    crop = RandStorePatchd(roi, mode="uniform", num_samples=3)
    crop.set_random_state(0)
    checked_padding = False
    for record, item in zip(records, (CT_A, CT_B), strict=True):
        for sample in crop(record):
            start = sample["image"].meta["patch_start"]
            expected = _nifti_crop(prepared_data, item, ["image", "label"], deterministic, roi, start)
            for key in ("image", "label"):
                assert sample[key].shape == (1, *roi)
                assert torch.equal(sample[key].as_tensor(), expected[key].as_tensor()), (
                    record["id"],
                    key,
                    start,
                )
                assert torch.allclose(sample[key].affine, expected[key].affine.double(), atol=1e-4)
            assert sample["subject"] == item["subject"]
            checked_padding |= any(
                s < 0 or s + r > d for s, r, d in zip(start, roi, record["shape"][1:], strict=True)
            )
    assert checked_padding


def test_store_crop_float16_modality_pool(prepared_data, tmp_path):
    """The SSL pool's per-modality scheme (CT window, MR percentiles) stored as float16: a crop equals
    today's pool_transforms crop to float16 precision (relative error <= 2**-11)."""
    out = tmp_path / "store"
    items = [CT_POOL, MR]
    summary = preprocess(
        str(_datalist(tmp_path, items)),
        out_dir=str(out),
        dataset_dir=str(prepared_data),
        pixdim=5.0,
        intensity="modality",
        dtype="float16",
    )
    assert summary["done"] == [item_id(0, CT_POOL), item_id(1, MR)]
    roi = (32, 32, 32)
    deterministic = pool_transforms(pixdim=5.0, track_meta=True)
    crop = RandStorePatchd(roi, num_samples=2)
    crop.set_random_state(1)
    for record, item in zip(load_manifest(out)["items"], items, strict=True):
        assert record["dtype"] == "float16" and record["fields"]["modality"] == item["modality"]
        for sample in crop(record):
            start = sample["image"].meta["patch_start"]
            expected = _nifti_crop(prepared_data, item, ["image"], deterministic, roi, start)["image"]
            got = sample["image"].as_tensor()
            assert got.dtype == torch.float32
            assert torch.allclose(got, expected.as_tensor(), rtol=2**-11, atol=2**-24)
            assert not torch.equal(got, expected.as_tensor())  # it is float16 data, not a float32 copy


def _mtimes(out, ident):
    paths = item_paths(ident)
    return {k: os.stat(out / p).st_mtime_ns for k, p in paths.items() if (out / p).exists()}


def test_resume_redoes_only_unfinished_items(prepared_data, tmp_path):
    """A rerun skips finished items (files untouched), redoes an item whose volume was deleted and one whose
    record is missing (killed before it was written), and never reads a half-written temporary file."""
    datalist = _datalist(tmp_path, [CT_A, CT_B, MR])
    out = tmp_path / "store"
    run = lambda: preprocess(str(datalist), out_dir=str(out), dataset_dir=str(prepared_data), pixdim=6.0)  # noqa: E731
    ids = [item_id(i, item) for i, item in enumerate([CT_A, CT_B, MR])]
    assert run()["done"] == ids
    before = {i: _mtimes(out, i) for i in ids}

    (out / item_paths(ids[1])["image"]).unlink()
    summary = run()
    assert summary["done"] == [ids[1]] and summary["skipped"] == [ids[0], ids[2]]
    assert _mtimes(out, ids[0]) == before[ids[0]] and _mtimes(out, ids[2]) == before[ids[2]]

    (out / item_paths(ids[2])["record"]).unlink()  # killed after its volume, before its record
    stale = out / "volumes" / f".tmp-0badc0de-{ids[0]}_image.b2nd"
    stale.write_bytes(b"half-written")
    summary = run()
    assert summary["done"] == [ids[2]] and summary["skipped"] == ids[:2]
    assert _mtimes(out, ids[0]) == before[ids[0]]
    records = store_records(str(out))
    assert [r["id"] for r in records] == ids
    assert all(".tmp-" not in json.dumps(r) for r in records)
    sample = RandStorePatchd(16)(records[0])[0]
    assert sample["image"].shape == (1, 16, 16, 16)


def test_parts_cover_every_item_once(prepared_data, tmp_path):
    """--part K --num_parts N: each part does every N-th item; the part that completes the datalist writes
    the manifest with every item."""
    items = [CT_A, CT_B, MR]
    datalist = _datalist(tmp_path, items)
    out = tmp_path / "store"
    done = []
    for part in range(2):
        summary = preprocess(
            str(datalist),
            out_dir=str(out),
            dataset_dir=str(prepared_data),
            pixdim=6.0,
            part=part,
            num_parts=2,
        )
        done += summary["done"]
        assert (summary["manifest"] is None) == (part == 0)
    ids = [item_id(i, item) for i, item in enumerate(items)]
    assert sorted(done) == ids
    assert [r["id"] for r in load_manifest(out)["items"]] == ids
    with pytest.raises(ValueError, match="part must be in 0..1"):
        preprocess(str(datalist), out_dir=str(out), part=2, num_parts=2)


def test_bad_items_are_reported_and_the_others_finish(prepared_data, tmp_path):
    """A truncated .nii.gz and a label of the wrong shape land in the manifest's failed list with their
    file and message; the good item is stored; the CLI exits non-zero naming both (2 worker processes)."""
    truncated = tmp_path / "truncated_ct.nii.gz"
    truncated.write_bytes((prepared_data / CT_A["image"]).read_bytes()[:2000])
    label = nib.load(prepared_data / CT_A["label"])
    wrong = tmp_path / "wrong_shape_label.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj)[:, :, :-3], label.affine), wrong)
    items = [
        CT_B,
        {"image": str(truncated)},
        {"image": str(prepared_data / CT_A["image"]), "label": str(wrong)},
    ]
    datalist = _datalist(tmp_path, items)
    out = tmp_path / "store"
    args = [f"--datalist_file={datalist}", f"--out_dir={out}", f"--dataset_dir={prepared_data}"]
    with pytest.raises(SystemExit) as exit_info:
        fire.Fire(command, command=[*args, "--pixdim=6.0", "--workers=2"])
    message = str(exit_info.value.code)
    assert str(truncated) in message and str(wrong) in message

    manifest = load_manifest(out)
    assert [r["id"] for r in manifest["items"]] == [item_id(0, CT_B)]
    failed = {r["id"]: r for r in manifest["failed"]}
    assert set(failed) == {item_id(1, items[1]), item_id(2, items[2])}
    bad_file = failed[item_id(1, items[1])]
    assert bad_file["files"]["image"] == str(truncated) and "not a readable image" in bad_file["error"]
    bad_label = failed[item_id(2, items[2])]
    assert bad_label["files"]["label"] == str(wrong) and "shape" in bad_label["error"]

    with pytest.raises(ValueError, match="2 item\\(s\\) failed preprocessing"):
        store_records(str(out))
    assert [r["id"] for r in store_records(str(out), on_bad_sample="skip")] == [item_id(0, CT_B)]


def _centre_labels(samples):
    out = []
    for s in samples:
        local = np.asarray(s["label"].meta["crop_center"]) - np.asarray(s["label"].meta["patch_start"])
        out.append(int(s["label"][(0, *local)]))
    return np.array(out)


def test_pos_neg_crops_at_the_stated_ratio(ct_store):
    """pos:neg = 3:1 -> 75 % of the crop centres lie on foreground (seeded, 400 crops: within 4 binomial
    standard deviations), and each such crop contains foreground."""
    record = load_manifest(ct_store)["items"][0]
    crop = RandStorePatchd(24, mode="pos_neg", pos=3.0, neg=1.0, num_samples=400)
    crop.set_random_state(0)
    samples = crop(record)
    on_fg = _centre_labels(samples) > 0
    assert abs(on_fg.mean() - 0.75) < 4 * np.sqrt(0.75 * 0.25 / 400)
    assert all(s["label"].max() > 0 for s, fg in zip(samples, on_fg, strict=True) if fg)


def test_class_balanced_crops_follow_ratios(ct_store):
    """ratios 1:3 on classes 2 (spleen) and 5 (aorta), 0 elsewhere: every centre is on one of them, at 1:3."""
    record = load_manifest(ct_store)["items"][1]
    ratios = [0.0] * 27
    ratios[2], ratios[5] = 1.0, 3.0
    crop = RandStorePatchd(24, mode="classes", ratios=ratios, num_samples=400)
    crop.set_random_state(0)
    centres = _centre_labels(crop(record))
    assert set(centres.tolist()) == {2, 5}
    assert abs((centres == 5).mean() - 0.75) < 4 * np.sqrt(0.75 * 0.25 / 400)
    with pytest.raises(ValueError, match="has no label"):
        RandStorePatchd(24, mode="classes")({k: v for k, v in record.items() if k != "locations"})


def test_patch_dataset_batches_through_todays_random_transforms(ct_store):
    """PatchDataset + DataLoader: crops flow through the segmentation pipeline's random transforms and
    collate into a batch of num_samples crops per item."""
    random_tail = [
        mt.RandScaleIntensityd("image", factors=0.1, prob=1.0),
        mt.RandShiftIntensityd("image", offsets=0.1, prob=1.0),
    ]
    dataset = PatchDataset(str(ct_store), roi_size=32, mode="pos_neg", num_samples=2, transform=random_tail)
    dataset.transform.set_random_state(0)
    batch = next(iter(DataLoader(dataset, batch_size=2, collate_fn=list_data_collate)))
    assert batch["image"].shape == (4, 1, 32, 32, 32) and batch["label"].shape == (4, 1, 32, 32, 32)
    assert batch["subject"] == ["totalseg_A", "totalseg_A", "totalseg_B", "totalseg_B"]


def test_read_patch_pads_outside_and_manifest_errors(ct_store, tmp_path):
    record = load_manifest(ct_store)["items"][0]
    volume = blosc2.open(record["image"], mmap_mode="r")
    patch = read_patch(volume, (-4, 0, 0), (8, 2, 2))
    assert np.all(patch[:, :4] == 0) and np.array_equal(patch[:, 4:], volume[:, 0:4, 0:2, 0:2])
    with pytest.raises(FileNotFoundError, match="store manifest not found"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"training": []}))
    with pytest.raises(ValueError, match="not a medfm-patch-store"):
        load_manifest(tmp_path)


def test_changed_source_or_settings_are_redone(prepared_data, tmp_path):
    """A source touched but unchanged (same sha256) is skipped; new content or other settings redo it."""
    source = tmp_path / "mr.nii.gz"
    source.write_bytes((prepared_data / MR["image"]).read_bytes())
    datalist = _datalist(tmp_path, [{"image": str(source), "modality": "MR"}])
    run = lambda **kw: preprocess(str(datalist), out_dir=str(tmp_path / "store"), **{"pixdim": 6.0, **kw})  # noqa: E731
    ident = item_id(0, {"image": str(source)})
    assert run()["done"] == [ident]
    os.utime(source, ns=(1, 1))
    assert run()["skipped"] == [ident]
    image = nib.load(source)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj) + 1, image.affine), source)
    assert run()["done"] == [ident]
    assert run(pixdim=5.0)["done"] == [ident]
    assert load_manifest(tmp_path / "store")["pipeline"]["pixdim"] == 5.0


def test_locations_stats_and_boxes_hand_cases():
    """Class locations lie on their class (at most per_class each, no repeats); stats and boxes match a
    hand-made volume."""
    label = np.zeros((6, 5, 4), dtype=np.uint8)
    label[1:3, 2:4, 1:2] = 1  # 4 voxels
    label[5, 4, 3] = 2
    locations = sample_locations(label, per_class=3, seed=0)
    assert sorted(locations) == ["class_0", "class_1", "class_2", "foreground"]
    assert [len(locations[k]) for k in ("class_0", "class_1", "class_2", "foreground")] == [3, 3, 1, 3]
    for name, coords in locations.items():
        values = label[tuple(coords.T)]
        assert np.all(values > 0) if name == "foreground" else np.all(values == int(name[6:]))
        assert len({tuple(c) for c in coords}) == len(coords)
    assert bounding_box(label > 0) == {"start": [1, 2, 1], "end": [6, 5, 4]}
    assert bounding_box(label > 2) is None
    stats = intensity_stats(np.array([0.0, 1.0, 2.0, 3.0]))
    assert stats["min"] == 0 and stats["max"] == 3 and stats["mean"] == 1.5 and stats["p50"] == 1.5
    assert stats["std"] == pytest.approx(np.sqrt(1.25))


def test_label_key_picks_or_drops_the_label(prepared_data, tmp_path):
    """--label_key seg stores the 'seg' file as the label; --label_key None an image-only store."""
    seg = {"image": CT_A["image"], "seg": CT_A["label"]}
    datalist = _datalist(tmp_path, [seg])
    common = {"dataset_dir": str(prepared_data), "pixdim": 6.0}
    preprocess(str(datalist), out_dir=str(tmp_path / "seg"), label_key="seg", **common)
    record = load_manifest(tmp_path / "seg")["items"][0]
    assert record["sources"]["label"]["file"] == str(prepared_data / CT_A["label"])
    assert record["class_voxels"]["1"] > 0 and "seg" not in record["fields"]
    preprocess(
        str(_datalist(tmp_path, [CT_A], "a.json")), out_dir=str(tmp_path / "img"), label_key=None, **common
    )
    record = load_manifest(tmp_path / "img")["items"][0]
    assert "label" not in record and "locations" not in record and list(record["sources"]) == ["image"]
