"""The benchmark matrix scores published checkpoints like its own encoders: two published-layout files with
random weights (MONAI's SwinUNETR self-supervised ``model_swinvit.pt`` layout and SuPreM's ``{"net":
{"module.backbone.*"}}`` layout) and scratch, 1 shot, 1 seed, 1 epoch, through ``monai.bundle``."""

import csv

import pytest
import torch
from monai.networks.nets import SwinUNETR
from test_benchmark import _benchmark_module

from common.data.fetch import sha256sum
from common.evaluation.benchmark_report import read_settings
from common.evaluation.curves import read_metric_histories
from common.networks import EncoderLoadError, encoder_from_file, read_encoder_file
from common.networks.published import export_published_encoder


def _published_files(tmp_path):
    """``(swinunetr_ssl file, suprem_swinunetr file, {name: the encoder's state the file must give})``."""
    torch.manual_seed(0)
    ssl, suprem = (SwinUNETR(in_channels=1, out_channels=2, feature_size=12) for _ in range(2))
    ssl_file, suprem_file = tmp_path / "model_swinvit.pt", tmp_path / "supervised_suprem_swinunetr.pth"
    state = {"module." + k: v for k, v in ssl.swinViT.state_dict().items()}
    torch.save({"state_dict": state | {"module.rotation_head.weight": torch.randn(4, 192)}}, ssl_file)
    state = {"module.backbone." + k: v for k, v in suprem.state_dict().items()}
    torch.save({"net": state | {"module.organ_embedding": torch.randn(3, 512)}}, suprem_file)
    expected = {"monai_ssl": ssl.swinViT.state_dict(), "suprem": suprem.swinViT.state_dict()}
    return ssl_file, suprem_file, expected


def test_export_published_encoder_gives_an_encoder_file(tmp_path):
    """The exported file rebuilds the published encoder from its meta alone (what ``pretrained_encoder``
    and ``encoder_from_file`` read) with the published weights."""
    ssl_file, _, expected = _published_files(tmp_path)
    out = export_published_encoder(
        "swinunetr_ssl", ssl_file, tmp_path / "out" / "encoder.pt", feature_size=12
    )
    encoder = encoder_from_file(out)
    state = encoder.state_dict()
    assert state.keys() == expected["monai_ssl"].keys()
    assert all(torch.equal(state[k], v) for k, v in expected["monai_ssl"].items())
    _, meta = read_encoder_file(out)
    assert meta["published_sha256"] == sha256sum(ssl_file) and meta["published_file"] == str(ssl_file)


@pytest.mark.slow
def test_matrix_with_published_checkpoints(prepared_data, tmp_path):
    ssl_file, suprem_file, expected = _published_files(tmp_path)
    small = {"feature_size": 12}
    encoders = {
        "monai_ssl": {"published": "swinunetr_ssl", "file": str(ssl_file), "config": small},
        "suprem": {"published": "suprem_swinunetr", "file": str(suprem_file), "config": small},
    }
    work_dir = tmp_path / "bench"
    kwargs = dict(
        methods=[],
        encoders=encoders,
        shots=[1],
        seeds=[0],
        work_dir=str(work_dir),
        feature_size=12,
        pixdim=4.0,
        roi_size=[64, 64, 32],
        num_samples=1,
        finetune_epochs=1,
        report=False,
    )
    main = _benchmark_module().main
    main(**kwargs)

    with (work_dir / "results.csv").open(newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["scratch", "monai_ssl", "suprem"]
    runs = {r["tags"]["method"]: r for r in read_metric_histories(work_dir / "mlruns.db", metrics=[])}
    settings = read_settings(work_dir)["encoders"]
    for name, file, published in (
        ("monai_ssl", ssl_file, "swinunetr_ssl"),
        ("suprem", suprem_file, "suprem_swinunetr"),
    ):
        converted = work_dir / "published" / name / "encoder.pt"
        assert rows[name]["encoder"] == str(converted) and rows[name]["mean_dice"] != ""
        tags = runs[name]["tags"]
        assert tags["encoder"] == str(converted) and runs[name]["run_id"] == rows[name]["run_id"]
        assert (tags["published"], tags["published_sha256"]) == (published, sha256sum(file))
        assert settings[name]["published_sha256"] == sha256sum(file)
        # the fine-tuned cell started from the published weights: the converted file holds them
        state, meta = read_encoder_file(converted)
        assert (meta["published"], meta["encoder"], meta["encoder_config"]["feature_size"]) == (
            published,
            "swin",
            12,
        )
        assert state.keys() == expected[name].keys()
        assert all(torch.equal(state[k], v) for k, v in expected[name].items())
    assert "published" not in runs["scratch"]["tags"]

    # resuming with another file for a published name is refused, naming the converted file
    other = {**encoders, "monai_ssl": {**encoders["monai_ssl"], "file": str(suprem_file)}}
    with pytest.raises(ValueError, match=r"monai_ssl.encoder\.pt: encoder 'monai_ssl' was converted from"):
        main(**{**kwargs, "encoders": other})
    # without the explicit size the matrix says which config key to set; a file of another layout or size
    # gives the loader's error naming the file
    with pytest.raises(ValueError, match=r"feature_size 12.*'swinunetr_ssl'.*'feature_size': 12"):
        main(**{**kwargs, "encoders": {"big": {"published": "swinunetr_ssl", "file": str(ssl_file)}}})
    with pytest.raises(EncoderLoadError, match=r"model_swinvit\.pt: published checkpoint 'suprem_swinunetr'"):
        wrong = {"published": "suprem_swinunetr", "file": str(ssl_file), "config": small}
        main(**{**kwargs, "encoders": {"x": wrong}})
