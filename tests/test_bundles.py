"""The model-zoo checks, run on every bundle under bundles/ (a new bundle is checked without editing this).

The first group mirrors the model zoo's verifier (``ci/verify_bundle.py``, mode ``full``) with MONAI's
defaults, on a copy of each bundle holding the ``models/model.pt`` that verifier makes; the second is the
collection's own (smoke training, inference, torchrun).
"""

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
def metadata_schema():
    """MONAI's metadata schema (``--schema``/``$MEDFM_BUNDLE_SCHEMA``, ``../shared/schemas``, the cache, or a
    download): without any of these, offline, the metadata checks are skipped with the message that says
    what to do."""
    try:
        return bc.resolve_schema(bc.config_path(BUNDLES[0], "metadata.json"))
    except bc.BundleCheckError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def zoo_copies(tmp_path_factory):
    """Each bundle copied once with the verifier's ``models/model.pt``: {bundle name: copy}."""
    copies = {}

    def get(bundle):
        if bundle.name not in copies:
            copies[bundle.name] = bc.zoo_copy(bundle, tmp_path_factory.mktemp(f"zoo-{bundle.name}"))
        return copies[bundle.name]

    return get


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
def test_model_zoo_files_with_its_weights(bundle, zoo_copies):
    copy = zoo_copies(bundle)
    bc.check_zoo_files(copy)
    weights = torch.load(copy / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert weights and all(isinstance(v, torch.Tensor) for v in weights.values())


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_version_is_in_the_changelog(bundle):
    bc.check_version(bundle)


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_metadata_is_valid_against_monai_schema(bundle, metadata_schema):
    bc.check_metadata(bundle, metadata_schema)


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_network_input_output_match_metadata_with_monai_defaults(bundle, zoo_copies):
    bc.check_net_in_out(zoo_copies(bundle))


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_train_workflow_has_properties_and_writes_a_checkpoint(bundle, smoke_runs):
    _, ckpt = smoke_runs(bundle)
    weights, _ = bc.model_weights(ckpt)
    assert len(weights) > 0 and all(isinstance(v, torch.Tensor) for v in weights.values())


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_infer_workflow_writes_outputs(bundle, smoke_runs):
    work_dir, ckpt = smoke_runs(bundle)
    written = bc.infer_smoke(bundle, ckpt, work_dir)
    assert all(p.stat().st_size > 0 for p in written)


TWO_NODE_BUNDLE = "mae_ssl_pretrain"  # its two ranks run as two nodes below (CI time: not twice)


@pytest.mark.parametrize("bundle", [b for b in BUNDLES if b.name != TWO_NODE_BUNDLE], ids=lambda b: b.name)
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


def test_metadata_missing_a_required_field_fails(bundle_copy, metadata_schema):
    _edit_json(bundle_copy / "configs" / "metadata.json", lambda m: m.pop("version"))
    with pytest.raises(bc.BundleCheckError, match=r"metadata\.json.*'version' is a required property"):
        bc.check_metadata(bundle_copy, metadata_schema)


def test_version_missing_from_the_changelog_fails(bundle_copy):
    _edit_json(bundle_copy / "configs" / "metadata.json", lambda m: m.update(version="9.9.9"))
    with pytest.raises(bc.BundleCheckError, match=r"metadata\.json: version 9\.9\.9 is missing from"):
        bc.check_version(bundle_copy)


def test_schema_is_found_without_the_sibling_folder(bundle_copy, metadata_schema, tmp_path, monkeypatch):
    """A user's clone has no ../shared: the environment variable, then the cache, then the download."""
    monkeypatch.setattr(bc, "SHARED_SCHEMA_DIR", tmp_path / "absent")
    monkeypatch.setenv("MEDFM_CACHE", str(tmp_path / "cache"))
    copied = tmp_path / "schema.json"
    shutil.copy(metadata_schema, copied)
    monkeypatch.setenv(bc.SCHEMA_ENV, str(copied))
    bc.check_metadata(bundle_copy)
    monkeypatch.delenv(bc.SCHEMA_ENV)
    # offline (a schema URL nothing answers): one message that says what to do
    _edit_json(
        bundle_copy / "configs" / "metadata.json",
        lambda m: m.update(schema="http://127.0.0.1:9/meta_schema_offline.json"),
    )
    with pytest.raises(
        bc.BundleCheckError, match=r"could not be downloaded.*--schema PATH.*MEDFM_BUNDLE_SCHEMA"
    ):
        bc.check_metadata(bundle_copy)
    cached = tmp_path / "cache" / "schemas" / "meta_schema_offline.json"
    shutil.copy(metadata_schema, cached)
    bc.check_metadata(bundle_copy)


def test_net_in_out_uses_monai_defaults(bundle_copy):
    """SwinUNETR's bottleneck is 1/32 of its input: at "32*n" with MONAI's n=1 it sees one voxel and its
    instance norm fails. The metadata must promise only what holds at every n."""
    _set_input_shape(bundle_copy, ["32*n"] * 3)
    with pytest.raises(
        bc.BundleCheckError, match=r"inference\.json: verify_net_in_out failed.*spatial element"
    ):
        bc.check_net_in_out(bundle_copy, feature_size=12)


def test_train_config_without_trainer_fails_the_property_check(bundle_copy, prepared_data, tmp_path):
    _edit_json(bundle_copy / "configs" / "train.json", lambda c: c["train"].pop("trainer"))
    with pytest.raises(bc.BundleCheckError, match=r"train\.json.*'trainer' with config ID 'train::trainer'"):
        bc.train_smoke(bundle_copy, tmp_path / "work")


def _set_input_shape(bundle, spatial_shape):
    _edit_json(
        bundle / "configs" / "metadata.json",
        lambda m: m["network_data_format"]["inputs"]["image"].update(spatial_shape=spatial_shape),
    )


def test_example_shape_is_read_as_monai_reads_it(bundle_copy):
    _set_input_shape(bundle_copy, ["64*n", "n*32", "*"])
    assert bc.example_input_shape(bundle_copy) == [1, 1, 64, 32, 1]
    _set_input_shape(bundle_copy, ["32*k", 64, 64])
    with pytest.raises(bc.BundleCheckError, match=r"spatial_shape \['32\*k', 64, 64\] is not a shape"):
        bc.example_input_shape(bundle_copy)


def test_cli_prints_a_table_and_fails_on_a_broken_check(tmp_path, metadata_schema):
    tool = REPO_ROOT / "tools" / "check_bundles.py"
    skip = "net_in_out,torchscript,onnx,train,infer,distributed"
    schema = ["--schema", str(metadata_schema)]
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


def test_two_nodes_meet_by_c10d_rendezvous_and_hold_the_same_weights(prepared_data, tmp_path):
    """``multi_gpu_train.json`` on two "nodes" of one process each, as a cluster runs it: two ``torchrun
    --nnodes 2 --node_rank {0,1}`` meeting by c10d rendezvous on 127.0.0.1 (gloo); the two global ranks
    must hold the same weights and only rank 0 writes. One bundle, the cheapest SSL one, which the
    single-node pair test leaves to this one (CI time)."""
    commands = bc.torchrun_commands(nproc=1, nnodes=2, rdzv_id="test")
    assert [c[c.index("--nnodes=2") + 1] for c in commands] == ["--node_rank=0", "--node_rank=1"]
    assert len({next(a for a in c if a.startswith("--rdzv_endpoint=127.0.0.1:")) for c in commands}) == 1
    bc.check_distributed(REPO_ROOT / "bundles" / TWO_NODE_BUNDLE, tmp_path, nproc=1, nnodes=2)
    written = sorted(p.name for p in (tmp_path / "distributed").glob("weights_rank*.json"))
    assert written == ["weights_rank0.json", "weights_rank1.json"]
