"""The model-zoo checks, run on every bundle under bundles/ (a new bundle is checked without editing this)."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from common import bundle_checks as bc
from common.bundle import REPO_ROOT

BUNDLES = bc.list_bundles()
IDS = [b.name for b in BUNDLES]


@pytest.fixture(scope="session")
def smoke_runs(prepared_data, tmp_path_factory):
    """Train each bundle once (smoke size) on demand: {bundle name: (work dir, checkpoint)}."""
    runs = {}

    def get(bundle):
        if bundle.name not in runs:
            work_dir = tmp_path_factory.mktemp(bundle.name)
            runs[bundle.name] = (work_dir, bc.train_smoke(bundle, work_dir))
        return runs[bundle.name]

    return get


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_required_files(bundle):
    bc.check_required_files(bundle)


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_metadata_is_valid_against_monai_schema(bundle):
    bc.check_metadata(bundle, bc.SHARED_SCHEMA)


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_network_input_output_match_metadata(bundle):
    bc.check_net_in_out(bundle)


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_train_workflow_has_properties_and_writes_a_checkpoint(bundle, smoke_runs):
    _, ckpt = smoke_runs(bundle)
    weights, _ = bc.model_weights(ckpt)
    assert len(weights) > 0 and all(isinstance(v, torch.Tensor) for v in weights.values())


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_torchscript_export_matches_eager(bundle, smoke_runs):
    work_dir, ckpt = smoke_runs(bundle)
    exported = bc.check_torchscript_export(bundle, ckpt, work_dir)
    extra_files = {"metadata.json": ""}
    torch.jit.load(str(exported), _extra_files=extra_files, map_location="cpu")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert json.loads(extra_files["metadata.json"])["version"] == meta["version"]


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_infer_workflow_writes_outputs(bundle, smoke_runs):
    work_dir, ckpt = smoke_runs(bundle)
    written = bc.infer_smoke(bundle, ckpt, work_dir)
    assert all(p.stat().st_size > 0 for p in written)


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_multi_gpu_pair_runs_under_torchrun_with_gloo(bundle, prepared_data, tmp_path):
    bc.check_distributed(bundle, tmp_path)


# The checks themselves must fail on a broken bundle, naming the file and the key.


@pytest.fixture
def bundle_copy(tmp_path):
    source = REPO_ROOT / "bundles" / "multiorgan_ct_segmentation"
    target = tmp_path / "bundles" / source.name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("models", "eval"))
    return target


def _edit_json(path, edit):
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))


def test_missing_file_is_named(bundle_copy):
    (bundle_copy / "LICENSE").unlink()
    with pytest.raises(bc.BundleCheckError, match="LICENSE"):
        bc.check_required_files(bundle_copy)


def test_metadata_missing_a_required_field_fails(bundle_copy):
    _edit_json(bundle_copy / "configs" / "metadata.json", lambda m: m.pop("version"))
    with pytest.raises(bc.BundleCheckError, match=r"metadata\.json.*'version' is a required property"):
        bc.check_metadata(bundle_copy, bc.SHARED_SCHEMA)


def test_train_config_without_trainer_fails_the_property_check(bundle_copy, prepared_data, tmp_path):
    _edit_json(bundle_copy / "configs" / "train.json", lambda c: c["train"].pop("trainer"))
    with pytest.raises(bc.BundleCheckError, match=r"train\.json.*'trainer' with config ID 'train::trainer'"):
        bc.train_smoke(bundle_copy, tmp_path / "work")


def test_export_rejects_a_shape_the_metadata_cannot_describe(bundle_copy):
    _edit_json(
        bundle_copy / "configs" / "metadata.json",
        lambda m: m["network_data_format"]["inputs"]["image"].update(spatial_shape=["n*32", 64, 64]),
    )
    with pytest.raises(bc.BundleCheckError, match="spatial_shape entry 'n\\*32'"):
        bc.example_input_shape(bundle_copy)


def test_cli_prints_a_table_and_fails_on_a_broken_check(tmp_path):
    tool = REPO_ROOT / "tools" / "check_bundles.py"
    skip = "net_in_out,train,export,infer,distributed"
    schema = ["--schema", str(bc.SHARED_SCHEMA)]
    ok = subprocess.run([sys.executable, str(tool), "--skip", skip, *schema], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    for name in IDS:
        assert f"{name}" in ok.stdout and "PASS" in ok.stdout
    bad = subprocess.run(
        [sys.executable, str(tool), "--skip", skip, "--schema", str(tmp_path / "absent.json")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "FAIL" in bad.stdout and "absent.json" in bad.stderr
