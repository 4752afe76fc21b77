"""Transfer: a pre-training bundle's encoder file starts the segmentation bundle's fine-tuning."""

import torch

from common import bundle_checks as bc
from common.bundle import REPO_ROOT
from common.networks import read_encoder_file

SEGMENTATION = REPO_ROOT / "bundles" / "multiorgan_ct_segmentation"
PRETRAINING = REPO_ROOT / "bundles" / "simmim_ssl_pretrain"


def _distance(a: dict, b: dict) -> float:
    return sum((a[k].float() - b[k].float()).pow(2).sum().item() for k in a) ** 0.5


def _network(workflow):
    return workflow.parser.get_parsed_content("network")


def test_segmentation_fine_tunes_from_the_pretrained_encoder(prepared_data, tmp_path):
    # another seed than the segmentation run's, so pre-trained and fresh weights differ from the start
    encoder_file = bc.train_smoke(PRETRAINING, tmp_path / "pretrain", seed=1)
    assert encoder_file.name == "encoder.pt"
    pretrained, meta = read_encoder_file(encoder_file)
    assert meta["method"] == "SimMIM" and meta["feature_size"] == 12

    files = [bc.config_path(SEGMENTATION, "train.json"), bc.config_path(SEGMENTATION, "smoke.json")]
    dirs = {"ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    scratch = _network(bc._workflow(SEGMENTATION, "train", files, **dirs)).swinViT.state_dict()
    workflow = bc._workflow(SEGMENTATION, "train", files, pretrained_encoder=str(encoder_file), **dirs)
    loaded = {k: v.clone() for k, v in _network(workflow).swinViT.state_dict().items()}
    assert loaded.keys() == pretrained.keys()
    assert all(torch.equal(loaded[k], pretrained[k]) for k in loaded)  # the file's weights, not a re-init
    assert _distance(scratch, pretrained) > 10.0

    workflow.run()
    tuned = _network(workflow).swinViT.state_dict()
    moved = _distance(tuned, pretrained)
    assert 0.0 < moved < 0.1 * _distance(scratch, pretrained)  # one step away from the pre-trained weights
    workflow.finalize()
