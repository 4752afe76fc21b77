"""Segmentation on a frozen encoder (DINOv2-radiology, papers/004 Sec. 3.3.2): linear and U-Net decoders
(common/networks/decoders.py), the frozen encoder-decoder and slice-wise 3D segmentation
(common/networks/encoder_decoder.py), and the mean of Dice and Jaccard (common/evaluation/overlap.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.engines import SupervisedEvaluator
from monai.metrics import DiceMetric, MeanIoU, compute_dice, compute_iou
from monai.networks.layers.factories import Conv, Norm
from monai.transforms import AsDiscreted
from torch import nn

from common.bundle import REPO_ROOT
from common.evaluation.overlap import DiceJaccardMetric, dice_jaccard, per_image_scores
from common.networks import build_encoder
from common.networks.decoders import LinearDecoder, UNetDecoder, decoder_blocks, resize, set_decoder_blocks
from common.networks.encoder_decoder import EncoderDecoder, SliceWise, build_frozen_segmenter, feature_spec
from common.networks.swin import SwinEncoder

NUM_CLASSES = 3


class PyramidStandIn(nn.Module):
    """A small pyramid encoder with the collection's interface: five stride-2 conv-BN-ReLU stages (strides
    2..32, like Swin and ConvNeXt)."""

    def __init__(self, spatial_dims: int, in_channels: int = 1, widths=(4, 6, 8, 10, 12)) -> None:
        super().__init__()
        conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
        ins = (in_channels, *widths[:-1])
        self.stages = nn.ModuleList(
            nn.Sequential(conv(i, o, 3, stride=2, padding=1), norm(o), nn.ReLU())
            for i, o in zip(ins, widths, strict=True)
        )
        self.spatial_dims, self.out_dim = spatial_dims, widths[-1]
        self.feature_channels = tuple(widths)
        self.feature_strides = tuple(2 ** (i + 1) for i in range(len(widths)))

    def features(self, x):
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, x):
        return self.features(x)[-1].flatten(2).mean(-1)


class EqualResolutionStandIn(nn.Module):
    """A ViT-like encoder: a stride-8 patch embedding, then four residual 1x1-conv blocks with dropout, each
    block's output a feature map at stride 8 (equal-resolution skips)."""

    def __init__(self, spatial_dims: int, in_channels: int = 1, width: int = 8, patch: int = 8) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.embed = conv(in_channels, width, patch, stride=patch)
        self.blocks = nn.ModuleList(
            nn.Sequential(conv(width, width, 1), nn.GELU(), nn.Dropout(0.5)) for _ in range(4)
        )
        self.spatial_dims, self.out_dim = spatial_dims, width
        self.feature_channels, self.feature_strides = (width,) * 4, (patch,) * 4

    def features(self, x):
        x, maps = self.embed(x), []
        for block in self.blocks:
            x = x + block(x)
            maps.append(x)
        return maps

    def forward(self, x):
        return self.features(x)[-1].flatten(2).mean(-1)


ENCODERS = {
    "swin2d": (lambda: SwinEncoder(feature_size=12, spatial_dims=2), (64, 64)),
    "swin3d": (lambda: SwinEncoder(feature_size=12, spatial_dims=3), (32, 32, 32)),
    "pyramid2d": (lambda: PyramidStandIn(2), (64, 64)),
    "pyramid3d": (lambda: PyramidStandIn(3), (32, 32, 32)),
    "equal2d": (lambda: EqualResolutionStandIn(2), (64, 64)),
    "equal3d": (lambda: EqualResolutionStandIn(3), (32, 32, 32)),
}
DECODER_VARIANTS = {
    "linear": ("linear", {}),
    "linear_all_scales": ("linear", {"use_all_scales": True}),
    "unet": ("unet", {"channels": (16, 12, 8, 4)}),
}


@pytest.mark.parametrize("decoder", sorted(DECODER_VARIANTS))
@pytest.mark.parametrize("encoder_name", sorted(ENCODERS))
def test_segmenter_gives_class_logits_at_the_input_size(encoder_name, decoder):
    torch.manual_seed(0)
    make, size = ENCODERS[encoder_name]
    kind, args = DECODER_VARIANTS[decoder]
    model = build_frozen_segmenter(make(), NUM_CLASSES, kind, spatial_size=size, **args)
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, NUM_CLASSES, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("spatial_dims, size", [(2, (64, 64)), (3, (32, 32, 32))])
def test_swin_declares_the_channels_of_its_feature_maps(spatial_dims, size):
    encoder = SwinEncoder(feature_size=12, spatial_dims=spatial_dims)
    with torch.no_grad():
        maps = encoder.features(torch.zeros(1, 1, *size))
    assert feature_spec(encoder, size) == tuple(m.shape[1] for m in maps) == (12, 24, 48, 96, 192)
    assert [m.shape[2] for m in maps] == [size[0] // s for s in encoder.feature_strides]


def test_feature_spec_reads_undeclared_channels_from_one_forward_in_eval_mode():
    encoder = PyramidStandIn(2).train()
    declared = encoder.feature_channels
    del encoder.feature_channels
    stats = {k: v.clone() for k, v in encoder.state_dict().items()}
    assert feature_spec(encoder, (64, 64)) == declared
    assert encoder.training  # mode restored
    assert all(torch.equal(v, stats[k]) for k, v in encoder.state_dict().items())  # BN statistics untouched


def _set_random_batch_norm(norm: nn.Module) -> None:
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    norm.weight.data.uniform_(0.5, 2)
    norm.bias.data.uniform_(-1, 1)


@pytest.mark.parametrize("use_all_scales", [False, True])
def test_linear_decoder_equals_batch_norm_and_a_linear_map_per_pixel(use_all_scales):
    """Reference written out: batch norm with its running statistics, then ``W z + b`` at every grid cell
    (einsum), then bilinear resizing; all scales: each map resized to the finest grid, concatenated."""
    torch.manual_seed(1)
    channels = (3, 4, 5, 6, 7)
    maps = [torch.randn(2, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate(channels)]
    decoder = LinearDecoder(channels, NUM_CLASSES, spatial_dims=2, use_all_scales=use_all_scales).eval()
    _set_random_batch_norm(decoder.norm)
    used = maps[1:] if use_all_scales else maps[-1:]
    grid = used[0].shape[2:]
    z = torch.cat([F.interpolate(m, size=grid, mode="bilinear", align_corners=False) for m in used], 1)
    n = decoder.norm
    z = (z - n.running_mean[:, None, None]) / torch.sqrt(n.running_var[:, None, None] + n.eps)
    z = z * n.weight[:, None, None] + n.bias[:, None, None]
    w, b = decoder.classifier.weight[:, :, 0, 0], decoder.classifier.bias
    logits = torch.einsum("kc,bchw->bkhw", w, z) + b[:, None, None]
    expected = F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(decoder(maps, (64, 64)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_unet_blocks_are_conv_relu_batchnorm_fed_by_the_last_four_maps(spatial_dims):
    feature_channels, widths = (3, 4, 5, 6, 7), (16, 12, 8, 4)
    decoder = UNetDecoder(feature_channels, NUM_CLASSES, spatial_dims, channels=widths)
    conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
    assert len(decoder.blocks) == 4
    # deepest map (7 channels) alone, then previous block + skip of 6, 5, 4 channels
    expected_inputs = (7, 16 + 6, 12 + 5, 8 + 4)
    for block, c_in, c_out in zip(decoder.blocks, expected_inputs, widths, strict=True):
        assert [type(m) for m in block] == [conv, nn.ReLU, norm]
        assert block[0].kernel_size == (3,) * spatial_dims
        assert (block[0].in_channels, block[0].out_channels, block[2].num_features) == (c_in, c_out, c_out)
    assert decoder.classifier.kernel_size == (1,) * spatial_dims


def test_unet_decoder_output_depends_on_exactly_the_last_four_maps():
    torch.manual_seed(2)
    channels = (3, 4, 5, 6, 7)
    maps = [torch.randn(1, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate(channels)]
    decoder = UNetDecoder(channels, NUM_CLASSES, 2, channels=(8, 8, 8, 8)).eval()
    with torch.no_grad():
        base = decoder(maps, (64, 64))
        for i in range(len(maps)):
            changed = [m + 1.0 if j == i else m for j, m in enumerate(maps)]
            differs = not torch.equal(decoder(changed, (64, 64)), base)
            assert differs == (i >= 1), f"map {i}"


def test_decoders_name_the_mismatch_in_bad_features():
    decoder = UNetDecoder((3, 4, 5, 6, 7), NUM_CLASSES, 2, channels=(8, 8, 8, 8))
    maps = [torch.randn(1, c, 8, 8) for c in (3, 4, 5, 6, 9)]
    with pytest.raises(ValueError, match="channels"):
        decoder(maps, (16, 16))
    with pytest.raises(ValueError, match="last 4 feature maps"):
        LinearDecoder((3, 4, 5), NUM_CLASSES, 2)
    with pytest.raises(ValueError, match="unknown decoder 'upernet'"):
        build_frozen_segmenter(PyramidStandIn(2), NUM_CLASSES, "upernet", spatial_size=(64, 64))
    with pytest.raises(ValueError, match="does not fit a 3D encoder"):
        build_frozen_segmenter(PyramidStandIn(3), NUM_CLASSES, spatial_size=(64, 64))


@pytest.mark.parametrize("make", [lambda: PyramidStandIn(2), lambda: EqualResolutionStandIn(2)])
@pytest.mark.parametrize("decoder", ["linear", "unet"])
def test_frozen_encoder_is_bit_identical_after_a_step_while_the_decoder_learns(make, decoder):
    torch.manual_seed(3)
    model = build_frozen_segmenter(make(), NUM_CLASSES, decoder, spatial_size=(64, 64))
    model.train()
    assert not model.encoder.training and all(not m.training for m in model.encoder.modules())
    assert model.decoder.training
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.decoder.parameters()}
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in model.decoder.named_parameters()}
    x, y = torch.randn(2, 1, 64, 64), torch.randint(0, NUM_CLASSES, (2, 64, 64))
    optimiser = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    F.cross_entropy(model(x), y).backward()
    optimiser.step()
    assert all(torch.equal(v, encoder_before[k]) for k, v in model.encoder.state_dict().items())
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(not torch.equal(p, decoder_before[k]) for k, p in model.decoder.named_parameters())
    # eval mode kept: dropout off and batch-norm running statistics used, so features are deterministic
    with torch.no_grad():
        first, second = model.encoder.features(x), model.encoder.features(x)
        assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_unfrozen_encoder_trains_with_the_decoder():
    torch.manual_seed(4)
    model = EncoderDecoder(PyramidStandIn(2), LinearDecoder((4, 6, 8, 10, 12), NUM_CLASSES, 2), False)
    model.train()
    assert model.encoder.training
    assert len(model.trainable_parameters()) == len(list(model.parameters()))
    before = model.encoder.stages[0][0].weight.clone()
    optimiser = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    F.cross_entropy(model(torch.randn(2, 1, 64, 64)), torch.randint(0, NUM_CLASSES, (2, 64, 64))).backward()
    optimiser.step()
    assert not torch.equal(model.encoder.stages[0][0].weight, before)


@pytest.mark.parametrize("axis", [2, 3, 4, -1])
def test_slice_wise_equals_a_loop_over_slices(axis):
    torch.manual_seed(5)
    segmenter_2d = build_frozen_segmenter(
        PyramidStandIn(2), NUM_CLASSES, "unet", spatial_size=(32, 32)
    ).eval()
    volume = torch.randn(2, 1, 32, 24, 16)
    with torch.no_grad():
        out = SliceWise(segmenter_2d, axis=axis, batch=3)(volume)
        loop = torch.stack(
            [segmenter_2d(volume.select(axis, s)) for s in range(volume.shape[axis])], dim=axis
        )
    assert out.shape == (2, NUM_CLASSES, 32, 24, 16)
    torch.testing.assert_close(out, loop, rtol=1e-5, atol=1e-6)


def test_2d_encoder_on_volumes_is_built_slice_wise():
    model = build_frozen_segmenter(PyramidStandIn(2), NUM_CLASSES, "linear", spatial_size=(32, 32, 8))
    assert isinstance(model, SliceWise) and isinstance(model.segmenter, EncoderDecoder)
    assert {id(p) for p in model.trainable_parameters()} == {
        id(p) for p in model.segmenter.decoder.parameters()
    }
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 32, 32, 8)).shape == (1, NUM_CLASSES, 32, 32, 8)
    with pytest.raises(ValueError, match="volumes"):
        model(torch.randn(1, 1, 32, 32))


def onehot(label_map, num_classes: int) -> torch.Tensor:
    """``(B, H, W)`` class ids (nested lists or a tensor) -> one-hot ``(B, K, H, W)``."""
    return F.one_hot(torch.as_tensor(label_map), num_classes).movedim(-1, 1)


# Hand-worked case: 2 images, 4x4, classes 1 and 2 (and 3, present nowhere), background 0.
LABEL = [
    [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]],
    [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
]
PRED = [
    [[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 2, 2], [0, 0, 0, 0]],
    [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
]


def test_dice_jaccard_on_hand_worked_masks():
    """Image 1: class 1 |P|=4, |L|=4, |P∩L|=3 -> Dice 6/8, Jaccard 3/5; class 2 |P|=2, |L|=4, |P∩L|=2 ->
    Dice 4/6, Jaccard 2/4. Image 2: class 1 predicted on an empty label -> 0 and 0; class 2 absent from
    both -> excluded. Class 3 absent everywhere -> excluded from the means."""
    scores = dice_jaccard(onehot(PRED, 4), onehot(LABEL, 4))
    nan = float("nan")
    torch.testing.assert_close(
        scores["dice_per_class"], torch.tensor([(0.75 + 0) / 2, 4 / 6, nan]), equal_nan=True
    )
    torch.testing.assert_close(
        scores["jaccard_per_class"], torch.tensor([(0.6 + 0) / 2, 0.5, nan]), equal_nan=True
    )
    dice, jaccard = (0.375 + 4 / 6) / 2, (0.3 + 0.5) / 2
    assert scores["dice"].item() == pytest.approx(dice)
    assert scores["jaccard"].item() == pytest.approx(jaccard)
    assert scores["dice_jaccard_mean"].item() == pytest.approx((dice + jaccard) / 2)
    torch.testing.assert_close(
        scores["dice_jaccard_per_class"], torch.tensor([0.3375, (4 / 6 + 0.5) / 2, nan]), equal_nan=True
    )


def test_dice_jaccard_with_background_on_hand_worked_masks():
    """Image 1 background: |P|=10, |L|=8, |P∩L|=7 -> Dice 14/18, Jaccard 7/11."""
    dice, jaccard = per_image_scores(onehot(PRED[:1], 3), onehot(LABEL[:1], 3), include_background=True)
    torch.testing.assert_close(dice, torch.tensor([[14 / 18, 6 / 8, 4 / 6]]))
    torch.testing.assert_close(jaccard, torch.tensor([[7 / 11, 3 / 5, 2 / 4]]))
    with pytest.raises(ValueError, match="differs from label shape"):
        dice_jaccard(onehot(PRED, 3), onehot(LABEL, 4))


def test_dice_jaccard_agrees_with_monai_dice_and_mean_iou():
    torch.manual_seed(6)
    label_map = torch.randint(0, 4, (3, 16, 16))
    label_map[:, 0, :4] = torch.arange(4)  # every class in every label: MONAI's empty-label NaN never arises
    pred, label = onehot(torch.randint(0, 4, (3, 16, 16)), 4), onehot(label_map, 4)
    dice, jaccard = per_image_scores(pred, label)
    torch.testing.assert_close(dice, compute_dice(pred, label, include_background=False))
    torch.testing.assert_close(jaccard, compute_iou(pred, label, include_background=False))
    scores = dice_jaccard(pred, label)
    monai_dice = DiceMetric(include_background=False, reduction="mean_batch")
    monai_iou = MeanIoU(include_background=False, reduction="mean_batch")
    monai_dice(pred, label)
    monai_iou(pred, label)
    torch.testing.assert_close(scores["dice_per_class"], monai_dice.aggregate())
    torch.testing.assert_close(scores["jaccard_per_class"], monai_iou.aggregate())
    expected = (monai_dice.aggregate().mean() + monai_iou.aggregate().mean()) / 2
    torch.testing.assert_close(scores["dice_jaccard_mean"], expected)


def test_metric_accumulates_batches_like_one_call():
    pred, label = onehot(PRED, 4), onehot(LABEL, 4)
    metric = DiceJaccardMetric()
    metric(pred[:1], label[:1])
    metric(list(pred[1:]), list(label[1:]))  # decollated items, as after MONAI post-processing
    torch.testing.assert_close(metric.aggregate(), dice_jaccard(pred, label)["dice_jaccard_mean"])


def test_handler_reports_dice_jaccard_in_a_supervised_evaluator():
    torch.manual_seed(7)
    network = build_frozen_segmenter(PyramidStandIn(2), NUM_CLASSES, "unet", spatial_size=(32, 32))
    batches = [
        {"image": torch.randn(2, 1, 32, 32), "label": torch.randint(0, NUM_CLASSES, (2, 1, 32, 32)).float()}
        for _ in range(2)
    ]
    handler = ConfigParser(
        {
            "_target_": "common.evaluation.overlap.DiceJaccardHandler",
            "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
        }
    ).get_parsed_content()
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=batches,
        network=network,
        postprocessing=AsDiscreted(keys=["pred", "label"], argmax=(True, False), to_onehot=NUM_CLASSES),
        key_val_metric={"val_dice_jaccard": handler},
    )
    evaluator.run()
    assert evaluator.state.iteration == 2
    network.eval()
    with torch.no_grad():
        pred = torch.cat([network(b["image"]).argmax(1) for b in batches])
    label = torch.cat([b["label"][:, 0].long() for b in batches])
    expected = dice_jaccard(onehot(pred, NUM_CLASSES), onehot(label, NUM_CLASSES))
    metrics = evaluator.state.metrics
    assert metrics["val_dice_jaccard"] == pytest.approx(expected["dice_jaccard_mean"].item())
    assert metrics["val_dice_jaccard_dice"] == pytest.approx(expected["dice"].item())
    assert metrics["val_dice_jaccard_jaccard"] == pytest.approx(expected["jaccard"].item())
    details = evaluator.state.metric_details
    assert details["val_dice_jaccard_dice"].shape == details["val_dice_jaccard"].shape == (4, NUM_CLASSES - 1)


def test_resize_keeps_a_map_already_at_the_size():
    x = torch.randn(1, 2, 4, 4, 4)
    assert resize(x, (4, 4, 4)) is x
    assert resize(x, (8, 6, 4)).shape == (1, 2, 8, 6, 4)


VIT_CONFIG = {"in_channels": 1, "embed_dim": 24, "depth": 8, "num_heads": 3, "patch_size": 8, "img_size": 32}


@pytest.mark.parametrize("choice,blocks", [("last", (4, 5, 6, 7)), ("spread", (1, 3, 5, 7))])
def test_decoder_reads_the_vit_blocks_chosen_last_four_by_default(choice, blocks):
    """DINOv2's decoders read the last four transformer blocks; "spread" keeps one block per quarter. The maps
    the decoder receives are the normed patch tokens of exactly those blocks (read by forward hooks)."""
    config = ConfigParser.load_config_file(
        str(REPO_ROOT / "bundles/radiograph_segmentation/configs/train.json")
    )
    assert config["decoder_blocks"] == "last" and config["network_def"]["decoder_blocks"] == "@decoder_blocks"
    torch.manual_seed(0)
    vit = build_encoder("vit", **VIT_CONFIG)
    assert vit.feature_blocks == (1, 3, 5, 7)  # the ViT's own default: a spread
    args = {} if choice == "last" else {"decoder_blocks": choice}
    model = build_frozen_segmenter(vit, NUM_CLASSES, "unet", spatial_size=(32, 32), **args).eval()
    assert vit.feature_blocks == decoder_blocks(8, choice) == blocks
    outputs = []
    for block in vit.blocks:
        block.register_forward_hook(lambda module, args, out: outputs.append(out))
    received = []
    model.decoder.register_forward_pre_hook(lambda module, args: received.extend(args[0]))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, NUM_CLASSES, 32, 32)
        expected = [vit._patches(vit.norm(outputs[b])).transpose(1, 2).reshape(2, 24, 4, 4) for b in blocks]
    assert len(received) == 4 and all(torch.equal(r, e) for r, e in zip(received, expected, strict=True))


def test_decoder_blocks_leave_pyramids_alone_and_name_bad_choices():
    pyramid = PyramidStandIn(2)
    assert set_decoder_blocks(pyramid, "last") is pyramid and not hasattr(pyramid, "feature_blocks")
    assert decoder_blocks(12) == (8, 9, 10, 11) and decoder_blocks(12, "spread") == (2, 5, 8, 11)
    own = build_encoder("vit", **{**VIT_CONFIG, "feature_blocks": (0, 2, 4, 6)})
    assert set_decoder_blocks(own, "encoder").feature_blocks == (0, 2, 4, 6)
    assert set_decoder_blocks(own, "last").feature_blocks == (4, 5, 6, 7)
    with pytest.raises(ValueError, match="decoder_blocks must be one of"):
        build_frozen_segmenter(PyramidStandIn(2), NUM_CLASSES, spatial_size=(64, 64), decoder_blocks="first")
    with pytest.raises(ValueError, match="fewer than 4"):
        decoder_blocks(3)
    with pytest.raises(ValueError, match="choose 'last' or 'spread'"):
        decoder_blocks(12, "encoder")
