"""Bad input gives errors that name the file (and the datalist key, item, config key) at fault: datalist
checks on corrupted copies of the embedded CT (headers at start-up, voxels when training first reads an
item), bad checkpoints, unknown command-line override keys."""

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys

import monai
import monai.transforms as mt
import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigWorkflow
from monai.data import CacheDataset, Dataset
from monai.transforms import LoadImage

from common.bundle import REPO_ROOT, check_overrides
from common.data import Datalist, cache_root, check_sample, load_datalist, with_content_check
from common.data.validation import header_grid
from common.engines import CheckpointLoader
from common.networks import EncoderLoadError, build_segmenter, load_encoder, load_network_except_output

SEGMENTATION = REPO_ROOT / "bundles" / "multiorgan_ct_segmentation" / "configs"
SIMMIM = REPO_ROOT / "bundles" / "simmim_ssl_pretrain" / "configs"
MONAI_MAIN = os.path.join(os.path.dirname(monai.__file__), "bundle", "__main__.py")
CLASSES = 27


@pytest.fixture(scope="module")
def subject(prepared_data, tmp_path_factory):
    """A directory holding TotalSegmentator subject A's real CT and label map (the smallest embedded CT),
    and a function writing modified copies of them: ``write(name, array, affine=None)``."""
    root = tmp_path_factory.mktemp("subject")
    for name in ("ct", "label"):
        shutil.copy(prepared_data / "ct_multiorgan" / f"totalseg_A_{name}.nii.gz", root / f"{name}.nii.gz")
    ct, label = (nib.load(root / f"{name}.nii.gz") for name in ("ct", "label"))

    def write(name, array, affine=None):
        nib.save(nib.Nifti1Image(array, ct.affine if affine is None else affine), root / name)
        return name

    return root, np.asarray(ct.dataobj), np.asarray(label.dataobj), ct.affine, write


def _datalist(root, items, key="training"):
    path = root / f"datalist_{len(list(root.glob('datalist_*')))}.json"
    path.write_text(json.dumps({key: items}))
    return path


def _load(root, items, **kwargs):
    return load_datalist(_datalist(root, items), "training", root, num_classes=CLASSES, **kwargs)


def _reader(datalist, max_substitutes=10):
    """The datalist as training reads it: MONAI's LoadImaged behind ``with_content_check``."""
    keys = [k for k in ("image", "label") if k in datalist[0]]
    loader = mt.Compose([mt.LoadImaged(keys, image_only=True, ensure_channel_first=True)])
    return Dataset(datalist, with_content_check(loader, datalist, max_substitutes))


def _first_read_error(datalist, index=0, max_substitutes=10):
    """The check's message that stops the first read of item ``index`` (MONAI wraps it in RuntimeError)."""
    with pytest.raises(RuntimeError) as err:
        _reader(datalist, max_substitutes)[index]
    cause = err.value
    while not isinstance(cause, ValueError):
        cause = cause.__cause__
    return str(cause)


GOOD = {"image": "ct.nii.gz", "label": "label.nii.gz"}


def test_the_real_subject_passes_and_is_read_as_monai_reads_it(subject):
    root = subject[0]
    datalist = _load(root, [GOOD])
    assert isinstance(datalist, Datalist) and [item["image"] for item in datalist] == [
        str(root / "ct.nii.gz")
    ]
    read = _reader(datalist)[0]
    plain = mt.LoadImaged(["image", "label"], image_only=True, ensure_channel_first=True)(datalist[0])
    for key in ("image", "label"):
        assert torch.equal(read[key], plain[key]) and torch.equal(read[key].affine, plain[key].affine)


def test_headers_give_the_shape_and_affine_monai_reads_in_every_format(prepared_data):
    """NIfTI 3D and 2D (nibabel header), NRRD and a DICOM radiograph (SimpleITK header): no voxel read."""
    raw = cache_root() / "raw"
    cases = [
        (prepared_data / "ct_multiorgan" / "totalseg_A_ct.nii.gz", 3),
        (next((prepared_data / "radiographs_simulated").glob("*_0.nii.gz")), 2),
        (raw / "pyradiomics" / "data" / "lung2_label.nrrd", 3),
        (raw / "pydicom_data" / "data_store" / "data" / "RG1_UNCR.dcm", 3),
    ]
    for path, dims in cases:
        shape, affine = header_grid(path, dims)
        image = LoadImage(image_only=True, ensure_channel_first=True)(path)
        assert shape == tuple(image.shape[1:]), path
        np.testing.assert_allclose(affine, image.affine.numpy(), atol=1e-4, err_msg=str(path))
    check_sample({"image": str(raw / "pyradiomics" / "data" / "lung2_image.nrrd"), "label": str(cases[2][0])})


def test_missing_file_names_datalist_key_index_and_path(subject):
    root = subject[0]
    path = _datalist(root, [GOOD, {"image": "ct.nii.gz", "label": "absent_label.nii.gz"}])
    with pytest.raises(FileNotFoundError) as err:
        load_datalist(path, "training", root, num_classes=CLASSES)
    assert str(err.value) == (
        f"{path}, key 'training', item 1: 'label' file not found: {root / 'absent_label.nii.gz'}"
    )


def test_empty_and_absent_keys(subject):
    root = subject[0]
    path = _datalist(root, [])
    with pytest.raises(ValueError, match=rf"{path}: key 'training' is empty"):
        load_datalist(path, "training", root)
    with pytest.raises(ValueError, match=rf"validation.*{path}"):  # MONAI's own message names both
        load_datalist(path, "validation", root)


def test_non_image_fails_at_start_and_truncated_file_at_first_read(subject):
    """A text file has no image header; a truncated one has its header, and the start-up check, reading
    headers only, lets it through: the first read names it."""
    root = subject[0]
    content = (root / "ct.nii.gz").read_bytes()
    (root / "truncated.nii.gz").write_bytes(content[: len(content) // 2])
    (root / "notes.nii.gz").write_text("not an image\n")
    with pytest.raises(ValueError, match=rf"item 0: {root / 'notes.nii.gz'} is not a readable image \("):
        _load(root, [{"image": "notes.nii.gz"}])
    datalist = _load(root, [GOOD, {"image": "truncated.nii.gz"}])
    assert _first_read_error(datalist, 1).startswith(
        f"{datalist.file}, key 'training', item 1: {root / 'truncated.nii.gz'} is not a readable image ("
    )


def test_wrong_number_of_dimensions_names_file_and_shape(subject):
    root, ct, _, _, write = subject
    name = write("slice.nii.gz", ct[:, :, 0])
    with pytest.raises(
        ValueError, match=rf"{root / name} has 2 spatial dimensions \(shape \(122, 101\)\); expected 3"
    ):
        _load(root, [{"image": name}])


def test_non_finite_voxels_are_counted_at_first_read(subject):
    root, ct, _, _, write = subject
    bad = ct.astype(np.float32)
    bad[0, 0, :3] = np.nan
    bad[1, 1, :2] = np.inf
    name = write("nan_ct.nii.gz", bad)
    datalist = _load(root, [{"image": name, "label": "label.nii.gz"}])
    assert _first_read_error(datalist) == (
        f"{datalist.file}, key 'training', item 0: {root / name} has 5 NaN or infinite voxels (of {ct.size})"
    )


def test_label_values_outside_the_classes_at_first_read(subject):
    root, _, label, _, write = subject
    bad = label.copy()
    bad[0, 0, 0], bad[0, 0, 1] = 30, 27
    name = write("bad_label.nii.gz", bad)
    datalist = _load(root, [GOOD, {"image": "ct.nii.gz", "label": name}])
    assert _first_read_error(datalist, 1) == (
        f"{datalist.file}, key 'training', item 1: "
        f"label {root / name} has values [27, 30] outside the 27 classes 0..26"
    )


def test_image_label_shape_and_affine_mismatch_name_both_files(subject):
    root, _, label, affine, write = subject
    cropped = write("cropped_label.nii.gz", label[:, :, :-1])
    with pytest.raises(ValueError) as err:
        _load(root, [{"image": "ct.nii.gz", "label": cropped}])
    message = str(err.value)
    assert f"image {root / 'ct.nii.gz'} has shape (122, 101, 30)" in message
    assert f"label {root / cropped} has shape (122, 101, 29)" in message
    shifted = affine.copy()
    shifted[0, 3] += 5.0
    moved = write("moved_label.nii.gz", label, shifted)
    with pytest.raises(ValueError) as err:
        _load(root, [{"image": "ct.nii.gz", "label": moved}])
    message = str(err.value)
    assert f"image {root / 'ct.nii.gz'} and label {root / moved} have different affines" in message


def test_skip_policy_leaves_out_bad_headers_and_replaces_bad_content_once(subject, caplog):
    root, ct, _, _, write = subject
    nan = ct.astype(np.float32)
    nan[0, 0, 0] = np.nan
    nans = [write(f"nan{i}.nii.gz", nan) for i in range(3)]
    items = [{"image": "absent.nii.gz", "label": "label.nii.gz"}, {"image": "ct.nii.gz"}, {"image": nans[0]}]
    with caplog.at_level(logging.WARNING, logger="common.data"):
        datalist = _load(root, items, on_bad_sample="skip")
        assert [item["image"] for item in datalist] == [str(root / "ct.nii.gz"), str(root / nans[0])]
        assert "item 0: 'image' file not found" in caplog.text and "skipped 1 of 3 samples" in caplog.text
        caplog.clear()
        reader, good = _reader(datalist), _reader(datalist)[0]["image"]
        assert torch.equal(reader[1]["image"], good) and torch.equal(reader[1]["image"], good)
    replaced = [r.message for r in caplog.records if "replacing" in r.message]
    assert replaced == [  # logged once: the bad item is not read again
        f"on_bad_sample='skip': replacing {datalist.file}, key 'training', item 2: "
        f"{root / nans[0]} has 1 NaN or infinite voxels (of {ct.size})"
    ]
    cached = CacheDataset(datalist, _reader(datalist).transform, cache_rate=1.0, num_workers=0)
    assert torch.equal(cached[1]["image"], good)  # the substitute fills the bad item's cache slot
    all_bad = _load(root, [{"image": n} for n in nans], on_bad_sample="skip")
    message = _first_read_error(all_bad, max_substitutes=1)
    assert message.endswith(
        "item 0: it and the 1 samples read in its place are all bad (on_bad_sample='skip'); "
        "check the datalist"
    )
    assert _first_read_error(all_bad).endswith("item 0: every sample of the datalist is bad")
    with pytest.raises(ValueError, match="every sample of key 'training' is bad"):
        _load(root, [items[0]], on_bad_sample="skip")
    with pytest.raises(ValueError, match="on_bad_sample must be one of"):
        _load(root, [GOOD], on_bad_sample="ignore")


def test_content_check_needs_the_checked_datalist_and_a_loader(subject):
    datalist = _load(subject[0], [GOOD])
    assert isinstance(datalist[:1], Datalist) and datalist[:1].origins is datalist.origins
    copied = pickle.loads(pickle.dumps(datalist[:1]))  # as spawned DataLoader workers receive it
    assert copied == datalist and copied.origin(copied[0]) == f"{datalist.file}, key 'training', item 0"
    plain = mt.Compose([mt.LoadImaged("image")])
    assert with_content_check(plain, list(datalist)) is plain  # MONAI Label's items: nothing to check with
    with pytest.raises(ValueError, match="has no LoadImaged"):
        with_content_check(mt.Compose([mt.Identityd("image")]), datalist)


def test_ssl_bundle_checks_content_when_training_first_reads_an_item(subject):
    """simmim_ssl_pretrain's train config reads its datalist through the content check: a NaN volume stops
    the first read under "raise" and is replaced by the next volume under "skip"."""
    root, ct, _, _, write = subject
    nan = ct.astype(np.float32)
    nan[5, 5, 5] = np.nan
    path = _datalist(root, [{"image": write("nan_pool.nii.gz", nan)}, {"image": "ct.nii.gz"}])
    overrides = {"datalist_file": str(path), "dataset_dir": str(root), "cache_rate": 0.0, "global_size": 32}

    def dataset(policy):
        workflow = ConfigWorkflow(
            config_file=str(SIMMIM / "train.json"), workflow_type="train", on_bad_sample=policy, **overrides
        )
        return workflow.parser.get_parsed_content("train#dataset")

    with pytest.raises(RuntimeError) as err:
        dataset("raise")[0]
    assert f"{path}, key 'training', item 0: {root / 'nan_pool.nii.gz'} has 1 NaN" in str(err.value.__cause__)
    views = dataset("skip")[0]
    assert views["global_0"].shape == (1, 32, 32, 32) and torch.isfinite(views["global_0"]).all()


def test_segmentation_bundle_checks_its_datalist_with_its_policy(subject):
    root, _, label, _, write = subject
    path = _datalist(root, [GOOD, {"image": "ct.nii.gz", "label": "absent.nii.gz"}])
    overrides = {"datalist_file": str(path), "dataset_dir": str(root)}
    workflow = ConfigWorkflow(
        config_file=str(SEGMENTATION / "train.json"), workflow_type="train", **overrides
    )
    with pytest.raises(RuntimeError) as err:  # MONAI wraps errors of "$" expressions
        workflow.parser.get_parsed_content("train#dataset#data")
    assert isinstance(err.value.__cause__, FileNotFoundError)
    assert f"{path}, key 'training', item 1: 'label' file not found" in str(err.value.__cause__)
    skipping = ConfigWorkflow(
        config_file=str(SEGMENTATION / "train.json"), workflow_type="train", on_bad_sample="skip", **overrides
    )
    assert len(skipping.parser.get_parsed_content("train#dataset#data")) == 1
    bad = label.copy()
    bad[0, 0, 0] = 40
    path = _datalist(root, [GOOD, {"image": "ct.nii.gz", "label": write("label_40.nii.gz", bad)}])
    workflow = ConfigWorkflow(
        config_file=str(SEGMENTATION / "train.json"),
        workflow_type="train",
        cache_rate=0.0,
        datalist_file=str(path),
        dataset_dir=str(root),
    )
    with pytest.raises(RuntimeError) as err:  # the label values are checked when training first reads them
        workflow.parser.get_parsed_content("train#dataset")[1]
    assert f"{path}, key 'training', item 1: label {root / 'label_40.nii.gz'} has values [40]" in str(
        err.value.__cause__
    )


def _truncated_checkpoint(tmp_path, net):
    path = tmp_path / "model.pt"
    torch.save({"model": net.state_dict()}, path)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    return path


def test_truncated_checkpoint_is_named_by_every_loader(tmp_path):
    net = build_segmenter("unet", out_channels=3, feature_size=4)
    path = _truncated_checkpoint(tmp_path, net)
    for load in (load_encoder, load_network_except_output):
        with pytest.raises(EncoderLoadError, match=rf"{path}: not a readable PyTorch weights file"):
            load(net, path)
    engine = Engine(lambda e, b: None)
    CheckpointLoader(str(path), {"model": net}).attach(engine)
    with pytest.raises(EncoderLoadError, match=rf"{path}: cannot load the checkpoint \(RuntimeError: "):
        engine.run([0])


def test_checkpoint_of_another_architecture_names_file_and_keys(tmp_path):
    path = tmp_path / "unet.pt"
    torch.save({"model": build_segmenter("unet", out_channels=3, feature_size=4).state_dict()}, path)
    engine = Engine(lambda e, b: None)
    CheckpointLoader(
        str(path), {"model": build_segmenter("segresnet", out_channels=3, feature_size=8)}
    ).attach(engine)
    with pytest.raises(EncoderLoadError) as err:
        engine.run([0])
    message = str(err.value)
    assert message.startswith(f"{path}: cannot load the checkpoint")
    assert (
        "Missing key(s)" in message and "convInit.conv.weight" in message and "Unexpected key(s)" in message
    )


def _argv(*args):
    return [MONAI_MAIN, "run", "training", "--config_file", str(SEGMENTATION / "train.json"), *args]


def test_override_keys_are_checked_against_the_configs(tmp_path):
    check_overrides(_argv("--learning_rate", "1e-3", "--network_def#dropout_path_rate", "0.1"))
    check_overrides(_argv("--train#handlers#0#loss_key", "loss", "--tracking", "mlflow", "--run_name", "a"))
    check_overrides(_argv("--_meta_#version", "9.9.9", "--train#trainer#max_epochs", "3"))
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"max_epoch": 3}))
    with pytest.raises(ValueError, match=r"--max_epoch \(did you mean --max_epochs\?\)"):
        check_overrides(_argv("--args_file", str(args_file)))
    with pytest.raises(ValueError) as err:
        check_overrides(_argv("--learning_rat", "1e-3", "--validate#inferer2", "x", "--max_epochs", "2"))
    message = str(err.value)
    assert "--learning_rat (did you mean --learning_rate?)" in message
    assert "--validate#inferer2 (did you mean --validate#inferer?)" in message
    assert "max_epochs" not in message and str(SEGMENTATION / "train.json") in message
    check_overrides(["pytest", "--learning_rat", "1"])  # not a monai.bundle process: nothing to check


def test_monai_bundle_run_rejects_an_unknown_key(tmp_path):
    command = [sys.executable, "-m", "monai.bundle", *_argv("--learning_rat", "0.1")[1:]]
    command += ["--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode != 0
    assert "unknown override key(s) --learning_rat (did you mean --learning_rate?)" in result.stderr
    assert not (tmp_path / "models").exists()
