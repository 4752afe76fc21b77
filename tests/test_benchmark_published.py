"""A study scores published checkpoints like its own encoders: two published-layout files with random
weights (MONAI's SwinUNETR self-supervised ``model_swinvit.pt`` layout and SuPreM's ``{"net":
{"module.backbone.*"}}`` layout) and scratch, 1 shot, 1 seed, 1 epoch of the micro benchmark study
(``tests/test_benchmark.py``), through ``monai.bundle``."""

import json

import pytest
import torch
from monai.networks.nets import SwinUNETR
from test_benchmark import micro_benchmark

from common.data.fetch import sha256sum
from common.evaluation.curves import read_metric_histories
from common.networks import EncoderLoadError, encoder_from_file, read_encoder_file
from common.networks.published import export_published_encoder
from common.study import load_study, run_study


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


def _study(tmp_path, encoders: dict):
    study = micro_benchmark(tmp_path / "unused.pt")
    study["encoders"] = {"scratch": {}, **encoders}
    study["matrix"][0]["encoders"] = list(study["encoders"])
    path = tmp_path / "published.json"
    path.write_text(json.dumps(study))
    return path


@pytest.mark.slow
def test_study_with_published_checkpoints(prepared_data, tmp_path):
    ssl_file, suprem_file, expected = _published_files(tmp_path)
    small = {"feature_size": 12}
    encoders = {
        "monai_ssl": {"published": "swinunetr_ssl", "file": str(ssl_file), "config": small},
        "suprem": {"published": "suprem_swinunetr", "file": str(suprem_file), "config": small},
    }
    work_dir = tmp_path / "bench"
    record = run_study(_study(tmp_path, encoders), jobs=2, work_dir=work_dir)

    cells = {c["encoder"]: c for c in record["cells"].values()}
    assert sorted(cells) == ["monai_ssl", "scratch", "suprem"]
    runs = {r["tags"]["encoder"]: r for r in read_metric_histories(work_dir / "mlruns.db", metrics=[])}
    for name, file, published in (
        ("monai_ssl", ssl_file, "swinunetr_ssl"),
        ("suprem", suprem_file, "suprem_swinunetr"),
    ):
        converted = cells[name]["encoder_file"]
        assert cells[name]["status"] == "done" and converted.startswith(str(work_dir / "published" / name))
        tags = runs[name]["tags"]
        assert tags["encoder_file"] == converted and runs[name]["run_id"] == cells[name]["run_id"]
        assert (tags["published"], tags["published_sha256"]) == (published, sha256sum(file))
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

    # another file for a published name is another cell (and another converted file), never a silent mix
    other = {**encoders, "monai_ssl": {**encoders["monai_ssl"], "file": str(suprem_file)}}
    old = {c.id for c in load_study(_study(tmp_path, encoders), work_dir).cells}
    new = {c.name: c for c in load_study(_study(tmp_path, other), work_dir).cells}
    assert new["seg.monai_ssl.1shot.seed0"].id not in old and new["seg.suprem.1shot.seed0"].id in old
    assert new["seg.monai_ssl.1shot.seed0"].spec["encoder_file"] != cells["monai_ssl"]["encoder_file"]
    # without the explicit size the runner says which config key to set; a file of another layout or
    # size gives the loader's error naming the file
    with pytest.raises(ValueError, match=r"feature_size 12.*'swinunetr_ssl'.*'feature_size': 12"):
        run_study(
            _study(tmp_path, {"big": {"published": "swinunetr_ssl", "file": str(ssl_file)}}),
            work_dir=work_dir,
        )
    with pytest.raises(EncoderLoadError, match=r"model_swinvit\.pt: published checkpoint 'suprem_swinunetr'"):
        wrong = {"published": "suprem_swinunetr", "file": str(ssl_file), "config": small}
        run_study(_study(tmp_path, {"x": wrong}), work_dir=work_dir)
