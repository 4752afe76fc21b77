"""The evaluation protocols through ``monai.bundle`` on the embedded data: frozen-encoder probing (kNN,
linear, few-shot), the fine-tuning protocols (LoRA, BitFit, linear) and frozen-encoder segmentation."""

import json

import pytest
import torch
from monai.bundle import run

from common import bundle_checks as bc
from common.bundle import REPO_ROOT
from common.data.organ_patches import ORGAN_CLASSES
from common.evaluation import bundle_runs
from common.networks import build_encoder, save_encoder

BUNDLES = REPO_ROOT / "bundles"


def configs(bundle, *names):
    return [str(BUNDLES / bundle / "configs" / n) for n in names]


@pytest.mark.parametrize("bundle", ["radiograph_classification", "ct_organ_classification"])
def test_probing_runs_knn_linear_and_fewshot_through_monai_bundle(bundle, prepared_data, tmp_path):
    overrides = bc.smoke_overrides(BUNDLES / bundle, "train.json")
    run(
        "probing",
        config_file=configs(bundle, "train.json", "probe.json"),
        output_dir=str(tmp_path),
        fewshot_shots=[1, 8],
        fewshot_seeds=[0, 1],
        **overrides,
    )
    rows = {r["protocol"]: r for r in json.loads((tmp_path / "probes" / "probes.json").read_text())}
    assert set(rows) == {"knn", "linear", "fewshot_1", "fewshot_8"}
    for name in ("knn", "linear", "fewshot_1"):
        assert 0.0 <= rows[name]["mean_auroc"] <= 1.0
    assert [r["seed"] for r in rows["fewshot_1"]["runs"]] == [0, 1]
    assert (
        "8 subjects per class requested" in rows["fewshot_8"]["skipped"]
    )  # too few subjects: said, not faked
    assert (tmp_path / "probes" / "probes.md").read_text().count("\n") == 6


def trained_weights(bundle, tmp_path, **overrides):
    ckpt = bc.train_smoke(BUNDLES / bundle, tmp_path, **overrides)
    weights, _ = bc.model_weights(ckpt)
    return weights


@pytest.mark.parametrize("protocol", ["linear", "bitfit", "lora"])
def test_finetuning_protocols_train_only_their_parameters(protocol, prepared_data, tmp_path):
    # a 3D Swin encoder file, as the 3D pre-training bundles write it
    config = {"in_channels": 1, "feature_size": 12, "spatial_dims": 3}
    encoder = build_encoder("swin", **config)
    save_encoder(encoder, tmp_path / "encoder.pt", encoder="swin", encoder_config=config)
    weights = trained_weights(
        "ct_organ_classification",
        tmp_path / "run",
        pretrained_encoder=str(tmp_path / "encoder.pt"),
        protocol=protocol,
    )
    start = encoder.state_dict()
    # LoRA keeps each wrapped layer's pre-trained weights under ``<layer>.base``
    trained = {
        k: weights.get(f"encoder.{k}", weights.get(f"encoder.{k.replace('.qkv.', '.qkv.base.')}"))
        for k in start
    }
    changed = {k for k, v in start.items() if not torch.equal(v, trained[k].cpu())}
    if protocol == "linear":
        assert not changed
    elif protocol == "bitfit":
        assert changed and all(k.endswith(".bias") for k in changed)
    else:
        assert not changed  # the pre-trained weights stay; only the adapters train
        adapters = [k for k in weights if "lora_" in k]
        assert adapters and any(weights[k].abs().sum() > 0 for k in adapters if "lora_b" in k)


def test_frozen_encoder_segmentation_keeps_the_encoder(prepared_data, tmp_path):
    config = {"in_channels": 1, "spatial_dims": 2, "depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}
    encoder = build_encoder("convnext", **config)
    save_encoder(encoder, tmp_path / "encoder.pt", encoder="convnext", encoder_config=config)
    for decoder in ("linear", "unet"):
        weights = trained_weights(
            "radiograph_segmentation",
            tmp_path / decoder,
            pretrained_encoder=str(tmp_path / "encoder.pt"),
            freeze_encoder=True,
            decoder=decoder,
        )
        for key, value in encoder.state_dict().items():
            assert torch.equal(value, weights[f"encoder.{key}"].cpu()), (decoder, key)


@pytest.mark.parametrize("arch", ["frozen_swin_linear", "frozen_swin_unet"])
def test_frozen_3d_swin_segmentation_keeps_the_encoder(arch, prepared_data, tmp_path):
    config = {"in_channels": 1, "feature_size": 12, "spatial_dims": 3}
    encoder = build_encoder("swin", **config)
    save_encoder(encoder, tmp_path / "encoder.pt", encoder="swin", encoder_config=config)
    weights = trained_weights(
        "multiorgan_ct_segmentation",
        tmp_path / arch,
        arch=arch,
        pretrained_encoder=str(tmp_path / "encoder.pt"),
    )
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, weights[f"encoder.{key}"].cpu()), key
    assert any(k.startswith("decoder.") for k in weights)


def test_organ_patch_datalist(prepared_data):
    data = json.loads((REPO_ROOT / "data_lists" / "ct_organ_patches.json").read_text())
    assert data["finding_names"] == list(ORGAN_CLASSES)
    assert {i["subject"] for i in data["test"]} == {"totalseg_A"}
    assert "totalseg_A" not in {i["subject"] for i in data["training"] + data["validation"]}
    for item in data["training"] + data["test"]:
        assert item["findings"][item["label"]] == 1  # the centre organ is present in its own patch
        assert (prepared_data / item["image"]).is_file()


def test_leader_distils_a_trained_classifier_and_a_coda_encoder(prepared_data, tmp_path):
    """The radiograph chain through monai.bundle: Coda's teacher encoder is the anatomy expert, a trained
    radiograph classifier (exported to TorchScript) the disease expert; LeADER's encoder then transfers."""
    coda = bc.train_smoke(BUNDLES / "coda_pretrain", tmp_path / "coda")
    assert coda.name == "encoder.pt"
    classifier = tmp_path / "classifier"
    bc.train_smoke(BUNDLES / "radiograph_classification", classifier)
    smoke = bc.smoke_overrides(BUNDLES / "radiograph_classification", "train.json")
    expert = bundle_runs.export_torchscript(
        "radiograph_classification",
        classifier,
        [1, 1, 64, 64],
        encoder_config=smoke["encoder_config"],
        image_size=64,
    )
    leader = bc.train_smoke(
        BUNDLES / "leader_pretrain",
        tmp_path / "leader",
        disease_teacher=str(expert),
        anatomy_teacher=str(coda),
    )
    state = torch.load(tmp_path / "leader" / "models" / "model.pt", map_location="cpu", weights_only=True)[
        "model"
    ]
    assert state["disease_head.2.weight"].shape[0] == 64  # the classifier's embedding (E_D), not its 2 logits
    assert state["anatomy_head.2.weight"].shape[0] == 64  # the smoke Coda ConvNeXt's width
    weights = trained_weights(
        "radiograph_classification",
        tmp_path / "transfer",
        pretrained_encoder=str(leader),
        encoder_name="swin",
        encoder_config={"in_channels": 1, "feature_size": 12, "spatial_dims": 2},
    )
    assert any(k.startswith("encoder.layers1") for k in weights)
