"""multiorgan_ct_segmentation through monai.bundle: few-shot key, pre-trained encoder, MLflow tracking."""

import sqlite3
from pathlib import Path

import torch
from monai.bundle import ConfigWorkflow

from common.bundle import REPO_ROOT
from common.networks import build_segmenter, save_encoder, swin_encoder

CONFIGS = REPO_ROOT / "bundles" / "multiorgan_ct_segmentation" / "configs"


def test_fewshot_finetuning_starts_from_the_encoder_and_is_tracked(prepared_data, tmp_path):
    torch.manual_seed(7)
    pretrained = swin_encoder(build_segmenter("swinunetr", out_channels=27, feature_size=12))
    encoder_file = save_encoder(pretrained, tmp_path / "encoder.pt", method="unit-test")
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "smoke.json")],
        workflow_type="train",
        tracking="mlflow",
        pretrained_encoder=str(encoder_file),
        train_datalist_key="training_1shot_seed0",
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "eval"),
    )
    workflow.initialize()
    network = workflow.parser.get_parsed_content("network")
    expected = pretrained.state_dict()
    start = {k: v.clone() for k, v in swin_encoder(network).state_dict().items()}
    assert all(torch.equal(start[k], expected[k]) for k in expected), "encoder was re-initialised"
    assert len(workflow.parser.get_parsed_content("train#dataset#data")) == 1

    workflow.run()
    workflow.finalize()
    after = swin_encoder(network).state_dict()
    assert any(not torch.equal(after[k], start[k]) for k in start), "fine-tuning did not update the encoder"
    assert (tmp_path / "models" / "model.pt").is_file()

    db = tmp_path / "eval" / "mlruns.db"
    with sqlite3.connect(db) as con:
        keys = {row[0] for row in con.execute("select distinct key from metrics")}
        experiments = {row[0] for row in con.execute("select name from experiments")}
    assert {"train_loss", "val_mean_dice"} <= keys
    assert "multiorgan_ct_segmentation" in experiments


def test_unet_option_builds_from_the_config():
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), workflow_type="train", arch="unet")
    network = workflow.parser.get_parsed_content("network_def")
    assert type(network).__name__ == "UNet"
    assert Path(workflow.parser.get_parsed_content("bundle_root")).name == "multiorgan_ct_segmentation"
