"""Bad input gives errors that name the file (and the datalist key, item, config key) at fault: datalist
checks on corrupted copies of the embedded CT, bad checkpoints, unknown command-line override keys."""

import json
import logging
import os
import shutil
import subprocess
import sys

import monai
import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigWorkflow

from common.bundle import REPO_ROOT, check_overrides
from common.data import load_datalist
from common.engines import CheckpointLoader
from common.networks import EncoderLoadError, build_segmenter, load_encoder, load_network_except_output

SEGMENTATION = REPO_ROOT / "bundles" / "multiorgan_ct_segmentation" / "configs"
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


GOOD = {"image": "ct.nii.gz", "label": "label.nii.gz"}


def test_the_real_subject_passes(subject):
    root = subject[0]
    assert [item["image"] for item in _load(root, [GOOD])] == [str(root / "ct.nii.gz")]


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


def test_truncated_and_non_image_files_are_named(subject):
    root = subject[0]
    content = (root / "ct.nii.gz").read_bytes()
    (root / "truncated.nii.gz").write_bytes(content[: len(content) // 2])
    (root / "notes.nii.gz").write_text("not an image\n")
    for name in ("truncated.nii.gz", "notes.nii.gz"):
        with pytest.raises(ValueError, match=rf"item 0: {root / name} is not a readable image \("):
            _load(root, [{"image": name}])


def test_wrong_number_of_dimensions_names_file_and_shape(subject):
    root, ct, _, _, write = subject
    name = write("slice.nii.gz", ct[:, :, 0])
    with pytest.raises(
        ValueError, match=rf"{root / name} has 2 spatial dimensions \(shape \(122, 101\), .*expected 3"
    ):
        _load(root, [{"image": name}])


def test_non_finite_voxels_are_counted(subject):
    root, ct, _, _, write = subject
    bad = ct.astype(np.float32)
    bad[0, 0, :3] = np.nan
    bad[1, 1, :2] = np.inf
    name = write("nan_ct.nii.gz", bad)
    with pytest.raises(ValueError, match=rf"{root / name} has 5 NaN or infinite voxels"):
        _load(root, [{"image": name, "label": "label.nii.gz"}])


def test_label_values_outside_the_classes(subject):
    root, _, label, _, write = subject
    bad = label.copy()
    bad[0, 0, 0], bad[0, 0, 1] = 30, 27
    name = write("bad_label.nii.gz", bad)
    with pytest.raises(
        ValueError, match=rf"label {root / name} has values \[27, 30\] outside the 27 classes 0..26"
    ):
        _load(root, [{"image": "ct.nii.gz", "label": name}])


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


def test_skip_policy_leaves_bad_samples_out_and_logs_the_count(subject, caplog):
    root, ct, _, _, write = subject
    nan = ct.astype(np.float32)
    nan[0, 0, 0] = np.nan
    items = [{"image": "absent.nii.gz", "label": "label.nii.gz"}, GOOD, {"image": write("nan1.nii.gz", nan)}]
    with caplog.at_level(logging.WARNING, logger="common.data.validation"):
        kept = _load(root, items, on_bad_sample="skip")
    assert [item["image"] for item in kept] == [str(root / "ct.nii.gz")]
    assert "item 0: 'image' file not found" in caplog.text and "item 2: " in caplog.text
    assert "skipped 2 of 3 samples" in caplog.text
    with pytest.raises(ValueError, match="every sample of key 'training' is bad"):
        _load(root, [items[0]], on_bad_sample="skip")
    with pytest.raises(ValueError, match="on_bad_sample must be one of"):
        _load(root, [GOOD], on_bad_sample="ignore")


def test_segmentation_bundle_checks_its_datalist_with_its_policy(subject):
    root = subject[0]
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
