"""The SuPreM bundle with its three backbones, partial labels in a real training run, and the transfer of
its network to the new class list of multiorgan_ct_segmentation."""

import json
import math

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow, run

from common import bundle_checks as bc
from common import bundle_export as be
from common.bundle import REPO_ROOT
from common.networks import build_segmenter, output_layer_prefixes

SUPREM = REPO_ROOT / "bundles" / "suprem_pretrain"
SEGMENTATION = REPO_ROOT / "bundles" / "multiorgan_ct_segmentation"
# segresnet is the smoke default, checked by test_bundles.py with every other bundle.
OTHER_BACKBONES = {
    "unet": {"backbone": "unet", "feature_size": 4},
    "swinunetr": {"backbone": "swinunetr", "feature_size": 12, "roi_size": [64, 64, 64]},
}


@pytest.mark.parametrize("backbone", sorted(OTHER_BACKBONES))
def test_bundle_checks_pass_with_each_backbone(backbone, prepared_data, tmp_path):
    overrides = OTHER_BACKBONES[backbone]
    bc.check_net_in_out(SUPREM, **overrides)
    ckpt = bc.train_smoke(SUPREM, tmp_path, **overrides)
    weights, _ = bc.model_weights(ckpt)
    fresh = build_segmenter(backbone, out_channels=3, feature_size=overrides["feature_size"])
    assert any(k.startswith(output_layer_prefixes(fresh)) for k in weights)
    assert bc.infer_smoke(SUPREM, ckpt, tmp_path, **overrides)
    exported = be.check_torchscript_export(SUPREM, ckpt, tmp_path, **overrides)
    assert exported.method == ("trace" if backbone == "swinunetr" else "script")


def test_training_feeds_each_batch_annotated_classes_to_the_loss(prepared_data, tmp_path):
    """One smoke epoch on a TotalSegmentator subject and a lung-tumour-only CT: the loss sees, for the
    batch, the annotated mask of the batch's source (the lung CT annotates the tumour only)."""
    files = [bc.config_path(SUPREM, "train.json"), bc.config_path(SUPREM, "smoke.json")]
    workflow = ConfigWorkflow(
        config_file=files,
        meta_file=bc.config_path(SUPREM, "metadata.json"),
        workflow_type="train",
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "eval"),
    )
    workflow.initialize()
    seen = []
    trainer = workflow.parser.get_parsed_content("train#trainer")
    loss = workflow.parser.get_parsed_content("loss")
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: seen.append(loss.annotated.clone()))
    workflow.run()
    workflow.finalize()
    datalist = json.loads((REPO_ROOT / "data_lists" / "suprem_ct.json").read_text())
    names = [datalist["labels"][str(i)] for i in range(len(datalist["labels"]))]
    expected = {
        tuple(name == "background" or name in datalist["sources"][src]["annotated"] for name in names)
        for src in ("totalsegmentator", "pyradiomics_lung")
    }
    assert {tuple(mask[0].tolist()) for mask in seen} == expected
    assert math.isfinite(trainer.state.output[0]["loss"])


def test_pretrained_network_transfers_to_a_new_class_list(prepared_data, tmp_path):
    """SuPreM (27 classes) -> multiorgan_ct_segmentation (27 different classes, 13 novel): every weight but
    the output layer comes from the pre-trained file; the output layer is freshly initialised."""
    ckpt = bc.train_smoke(SUPREM, tmp_path / "suprem")
    pretrained, _ = bc.model_weights(ckpt)
    overrides = {"arch": "segresnet", "feature_size": 8, "pretrained_network": str(ckpt)}
    workflow = ConfigWorkflow(
        config_file=[bc.config_path(SEGMENTATION, "train.json"), bc.config_path(SEGMENTATION, "smoke.json")],
        meta_file=bc.config_path(SEGMENTATION, "metadata.json"),
        workflow_type="train",
        ckpt_dir=str(tmp_path / "seg" / "models"),
        output_dir=str(tmp_path / "seg" / "eval"),
        **overrides,
    )
    workflow.initialize()
    network = workflow.parser.get_parsed_content("network")
    output = output_layer_prefixes(network)
    state = network.state_dict()
    transferred = [k for k in state if not k.startswith(output)]
    assert transferred and all(torch.equal(state[k], pretrained[k]) for k in transferred)
    assert all(
        not torch.equal(state[k], pretrained[k])
        for k in state
        if k.startswith(output) and k.endswith("weight")
    )
    workflow.run()  # one fine-tuning epoch from the transferred network
    workflow.finalize()
    assert (tmp_path / "seg" / "models" / "model.pt").is_file()


def test_lesion_classification_config_runs_through_monai_bundle(prepared_data, tmp_path):
    """configs/lesion_classification.json: a random network (ckpt_path "") and a trained SuPreM checkpoint
    both give a leave-one-case-out AUC over the five real lesion cases."""
    ckpt = bc.train_smoke(SUPREM, tmp_path / "suprem")
    config = bc.config_path(SUPREM, "lesion_classification.json")
    small = {"backbone": "segresnet", "feature_size": 8, "roi_size": [16, 16, 16], "patches_per_class": 2}
    scores = {}
    for name, path in (("random", ""), ("trained", str(ckpt))):
        out = tmp_path / name
        run("evaluating", config_file=config, ckpt_path=path, output_dir=str(out), **small)
        report = json.loads((out / "lesion_classification.json").read_text())
        assert report["num_patches"] == 5 * 2 * 2 and len(report["cases"]) == 5
        assert 0.0 <= report["auc"] <= 1.0 and (out / "lesion_roc.png").stat().st_size > 0
        scores[name] = report["scores"]
    assert scores["random"] != scores["trained"]  # the checkpoint's weights were loaded (same seed otherwise)
