"""LeADER as papers/001 defines it: the disease expert teaches its embedding E_D (not a classifier's logits),
stage 1 reads the image-only datalist and stage 2 the image+patch one (Algorithm 1, blocks or alternating
rounds), and the Swin student can be the paper's Swin-B."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events

from common.bundle_checks import smoke_overrides
from common.engines import LeADERStageHandler
from common.evaluation.bundle_runs import bundle_dir, workflow
from common.networks import build_classifier
from common.networks.swin import SwinEncoder
from common.ssl.leader import ClassifierEmbedding, LeADER, load_teacher

CONVNEXT = {"in_channels": 1, "spatial_dims": 2, "depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}
VIT = {"in_channels": 1, "embed_dim": 24, "depth": 4, "num_heads": 3, "patch_size": 8, "img_size": 64}


def student():
    return SwinEncoder(in_channels=1, feature_size=12, spatial_dims=2)


def test_a_classifier_teaches_its_embedding_not_its_logits(tmp_path):
    torch.manual_seed(0)
    classifier = build_classifier("convnext", CONVNEXT, num_classes=3).eval()
    x = torch.rand(2, 1, 64, 64)
    leader = LeADER(student(), classifier, student(), input_shape=(1, 64, 64), head_hidden_dim=16)
    assert isinstance(leader.disease_teacher, ClassifierEmbedding)
    assert leader.disease_head[-1].out_features == 64 != 3  # the encoder's width, not the 3 classes
    with torch.no_grad():
        e_d = classifier.encoder(x)
        assert torch.equal(leader.disease_teacher(x), e_d)
        expected = F.mse_loss(leader.disease_head(leader.encoder(x)), e_d)
        assert leader({"image": x})["loss"].item() == pytest.approx(expected.item(), rel=1e-6)

    torch.jit.script(classifier).save(str(tmp_path / "classifier.ts"))  # the classification bundle's export
    scripted = load_teacher(tmp_path / "classifier.ts")
    assert isinstance(scripted, ClassifierEmbedding) and not any(
        p.requires_grad for p in scripted.parameters()
    )
    with torch.no_grad():
        assert torch.allclose(scripted(x), e_d, atol=1e-6)


def test_a_token_view_classifier_teaches_the_view_its_head_reads():
    torch.manual_seed(0)
    classifier = build_classifier("vit", VIT, num_classes=2, features="cls+mean_patch").eval()
    x = torch.rand(2, 1, 64, 64)
    teacher = LeADER(student(), classifier, student(), input_shape=(1, 64, 64), head_hidden_dim=8)
    with torch.no_grad():
        cls, patches = classifier.encoder.tokens(x)
        assert torch.equal(teacher.disease_teacher(x), torch.cat([cls, patches.mean(1)], -1))
    assert teacher.disease_head[-1].out_features == 2 * 24


def run_stages(handler: LeADERStageHandler, max_epochs: int, epoch_length: int) -> list[tuple[int, str]]:
    seen = []
    engine = Engine(lambda e, batch: seen.append((e.network.stage, batch)))
    engine.network = LeADER(student(), student(), student(), input_shape=(1, 64, 64), head_hidden_dim=8)
    handler.attach(engine)
    engine.run(["initial"], max_epochs=max_epochs, epoch_length=epoch_length)
    return seen


def test_stage_handler_switches_the_data_source_with_the_stage():
    images, pairs = ["image-1", "image-2", "image-3"], ["pair-1"]
    blocks = run_stages(LeADERStageHandler(2, stage1_data=images, stage2_data=pairs), 4, 2)
    # stage 1 reads the image datalist, stage 2 the pairs (restarted to fill the epoch), never "initial"
    assert blocks == [(1, "image-1"), (1, "image-2"), (1, "image-1"), (1, "image-2")] + [(2, "pair-1")] * 4
    rounds = run_stages(LeADERStageHandler(99, True, stage1_data=images, stage2_data=pairs), 4, 1)
    assert rounds == [(1, "image-1"), (2, "pair-1"), (1, "image-1"), (2, "pair-1")]  # Algorithm 1's rounds
    assert [LeADERStageHandler(2).stage(e) for e in (1, 2, 3, 9)] == [1, 1, 2, 2]
    with pytest.raises(ValueError, match="both stage1_data and stage2_data"):
        LeADERStageHandler(2, stage1_data=images)


def test_bundle_stage_1_reads_images_only_and_stage_2_image_patch_pairs(prepared_data, tmp_path):
    overrides = smoke_overrides(bundle_dir("leader_pretrain"), "train.json")
    flow = workflow(
        "leader_pretrain", ["train.json"], "training", tmp_path, **{**overrides, "alternate_rounds": True}
    )
    assert flow.parser.get_parsed_content("stage1_datalist_file").endswith("radiograph_pretrain.json")
    assert flow.parser.get_parsed_content("datalist_file").endswith("radiograph_boxes.json")
    seen = []
    trainer = flow.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(
        Events.ITERATION_STARTED,
        lambda e: seen.append((e.network.stage, sorted(k for k in e.state.batch if k in ("image", "patch")))),
    )
    flow.run()
    flow.finalize()
    assert seen == [(1, ["image"]), (2, ["image", "patch"])]


def swin_b_backbone_parameters(in_channels: int, patch: int = 2, window: int = 7) -> int:
    """Swin-B (Liu et al. 2021, Table 1: C = 128, depths 2-2-18-2, heads 4-8-16-32, window 7) as MONAI builds
    it (patch embedding without norm, no final norm), counted from its layers, without MONAI's merging
    after the last stage. Block: 2 norms (2C each), qkv (3C^2 + 3C), projection (C^2 + C), relative
    position bias ((2w - 1)^2 heads), MLP (C -> 4C -> C); merging: norm (8C) and reduction 4C -> 2C."""
    total = in_channels * patch * patch * 128 + 128
    for stage, (blocks, heads) in enumerate(zip((2, 2, 18, 2), (4, 8, 16, 32), strict=True)):
        c = 128 * 2**stage
        block = (
            4 * c + (3 * c * c + 3 * c) + (c * c + c) + (2 * window - 1) ** 2 * heads + (8 * c * c + 5 * c)
        )
        total += blocks * block + (8 * c + 8 * c * c if stage < 3 else 0)
    return total


def test_the_student_can_be_swin_b():
    encoder = SwinEncoder(
        in_channels=3, feature_size=128, spatial_dims=2, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)
    )
    assert [
        len(layer[0].blocks) for layer in (encoder.layers1, encoder.layers2, encoder.layers3, encoder.layers4)
    ] == [
        2,
        2,
        18,
        2,
    ]
    assert encoder.layers3[0].blocks[0].attn.num_heads == 16
    total = sum(p.numel() for p in encoder.parameters())
    last_merging = sum(p.numel() for p in encoder.layers4[0].downsample.parameters())
    backbone = total - last_merging
    assert backbone == swin_b_backbone_parameters(3)
    assert 86.5e6 < backbone < 87.5e6  # Swin-B: 88M with its 1000-class head (1.03M)
    assert last_merging == 8 * 1024 + 4 * 1024 * 2048  # MONAI's extra merging: out_dim = 16 * 128
    with pytest.raises(ValueError, match="4 stages"):
        SwinEncoder(spatial_dims=2, depths=(2, 2, 2))
