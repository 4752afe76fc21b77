"""MAE (masked-token form) and Models Genesis: the MAE loss and patchify, the Models Genesis
transformations, and one training step of each method."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai import transforms as mt

from common.losses.mae import NORM_PIX_EPS, mae_loss, patchify
from common.networks.swin import SwinEncoder, tokens
from common.ssl.genesis import ModelsGenesis
from common.ssl.mae import MAE
from common.ssl.masking import patch_mask_for, token_mask
from common.transforms.genesis import (
    CORRUPTED_KEY,
    ModelsGenesisd,
    bezier_curve,
    draw_paint_boxes,
    draw_shuffle_blocks,
    genesis_transforms,
    inpaint,
    intensity_curve,
    nonlinear_transform,
    outpaint,
    shuffle_blocks,
)
from common.transforms.masking import upsample_mask

# ---------------------------------------------------------------- MAE loss and patchify


def _naive_mae_loss(pred, target, mask, norm_pix):
    total, count = 0.0, 0
    batch, patches, values = pred.shape
    for b in range(batch):
        for n in range(patches):
            if not mask[b, n]:
                continue
            t = target[b, n].tolist()
            if norm_pix:
                mean = sum(t) / values
                var = sum((v - mean) ** 2 for v in t) / (values - 1)
                t = [(v - mean) / (var + NORM_PIX_EPS) ** 0.5 for v in t]
            total += sum((p - v) ** 2 for p, v in zip(pred[b, n].tolist(), t, strict=True)) / values
            count += 1
    return total / count


@pytest.mark.parametrize("norm_pix", [False, True])
def test_mae_loss_matches_a_naive_loop(norm_pix):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 5, 8, generator=g, dtype=torch.float64)
    target = torch.rand(3, 5, 8, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 5, generator=g) > 0.4
    expected = _naive_mae_loss(pred, target, mask, norm_pix)
    assert mae_loss(pred, target, mask, norm_pix).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_mae_loss_ignores_visible_patches(norm_pix):
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 6, 8, generator=g, dtype=torch.float64)
    target = torch.rand(2, 6, 8, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, False, False, True]] * 2)
    changed_pred, changed_target = pred.clone(), target.clone()
    changed_pred[~mask] = 100.0
    changed_target[~mask] = torch.rand(int((~mask).sum()), 8, generator=g, dtype=torch.float64)
    before = mae_loss(pred, target, mask, norm_pix)
    assert mae_loss(changed_pred, changed_target, mask, norm_pix).item() == pytest.approx(
        before.item(), abs=1e-12
    )
    changed_pred[mask] += 1.0  # a masked patch does count
    assert mae_loss(changed_pred, changed_target, mask, norm_pix).item() != pytest.approx(
        before.item(), abs=1e-3
    )


def test_mae_loss_hand_cases():
    target = torch.tensor([[[1.0, 3.0], [5.0, 5.0]]], dtype=torch.float64)
    mask = torch.tensor([[True, False]])
    zeros = torch.zeros_like(target)
    # plain target: only the first patch counts, ((0-1)^2 + (0-3)^2) / 2 = 5
    assert mae_loss(zeros, target, mask, norm_pix=False).item() == pytest.approx(5.0)
    # normalised target: mean 2, unbiased variance 2, so the patch becomes (-1, 1) / sqrt(2 + eps)
    assert mae_loss(zeros, target, mask, norm_pix=True).item() == pytest.approx(1 / (2 + 1e-6), abs=1e-12)
    normalised = torch.tensor([[[-1.0, 1.0], [7.0, 7.0]]], dtype=torch.float64) / (2 + 1e-6) ** 0.5
    assert mae_loss(normalised, target, mask, norm_pix=True).item() == pytest.approx(0.0, abs=1e-12)
    assert mae_loss(target, target, torch.ones(1, 2, dtype=torch.bool), norm_pix=False).item() == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        mae_loss(zeros, target, mask[:, :1])


@pytest.mark.parametrize("spatial", [(4, 6, 8), (6, 4)])
def test_patchify_matches_naive_indices(spatial):
    patch, channels = 2, 3
    x = torch.rand(2, channels, *spatial, dtype=torch.float64)
    out = patchify(x, patch)
    grid = [s // patch for s in spatial]
    assert out.shape == (2, int(np.prod(grid)), patch ** len(spatial) * channels)
    for b in range(2):
        for n, cell in enumerate(itertools.product(*map(range, grid))):
            for k, (*offset, c) in enumerate(
                itertools.product(*[range(patch)] * len(spatial), range(channels))
            ):
                voxel = tuple(g * patch + o for g, o in zip(cell, offset, strict=True))
                assert out[b, n, k] == x[(b, c, *voxel)]
    # patches are numbered like the tokens of a stride-`patch` feature map
    pooled = F.avg_pool3d(x, patch) if len(spatial) == 3 else F.avg_pool2d(x, patch)
    assert torch.allclose(out.view(2, out.shape[1], -1, channels).mean(2), tokens(pooled))
    with pytest.raises(ValueError, match="multiple of patch"):
        patchify(torch.rand(1, 1, 5, 4), 2)


# ---------------------------------------------------------------- Models Genesis transformations


def _de_casteljau(points, t):
    points = [np.asarray(p, dtype=float) for p in points]
    while len(points) > 1:
        points = [(1 - t) * a + t * b for a, b in zip(points[:-1], points[1:], strict=True)]
    return points[0]


def test_bezier_curve_matches_de_casteljau():
    points = np.array([[0.0, 0.0], [0.2, 0.9], [0.7, 0.1], [1.0, 1.0]])
    xs, ys = bezier_curve(points, samples=5)
    for i, t in enumerate(np.linspace(0, 1, 5)):
        assert np.allclose((xs[i], ys[i]), _de_casteljau(points, t), atol=1e-12)
    # by hand at t = 1/2: (P0 + 3 P1 + 3 P2 + P3) / 8
    assert np.allclose((xs[2], ys[2]), ((0 + 0.6 + 2.1 + 1) / 8, (0 + 2.7 + 0.3 + 1) / 8))


def test_intensity_curve_is_monotonic_with_fixed_endpoints():
    directions = set()
    for seed in range(8):
        xp, fp = intensity_curve(np.random.RandomState(seed))
        assert np.all(np.diff(xp) >= 0) and (xp[0], xp[-1]) == (0.0, 1.0)
        increasing = bool(fp[-1] > fp[0])
        directions.add(increasing)
        assert np.all(np.diff(fp) >= 0) if increasing else np.all(np.diff(fp) <= 0)
        assert (fp[0], fp[-1]) == ((0.0, 1.0) if increasing else (1.0, 0.0))
    assert directions == {True, False}  # the inverted curve is drawn too


def test_nonlinear_transform_follows_the_curve():
    x = np.random.RandomState(0).random_sample((1, 16, 16, 16)).astype(np.float32)
    out = nonlinear_transform(x, np.random.RandomState(3))
    xp, fp = intensity_curve(np.random.RandomState(3))  # the same draw
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.allclose(out, np.interp(x, xp, fp), atol=1e-4)
    order = np.argsort(x.ravel())
    steps = np.diff(out.ravel()[order])
    assert np.all(steps >= -1e-6) or np.all(steps <= 1e-6)  # voxel order kept (or reversed)


def test_local_shuffle_keeps_the_voxels_of_each_block():
    rng = np.random.RandomState(0)
    spatial = (40, 40, 40)
    x = rng.permutation(np.prod(spatial)).reshape(1, *spatial).astype(np.float64)
    x = np.concatenate([x, 2 * x])  # channels travel together
    starts, sizes = draw_shuffle_blocks(rng, spatial, 40)
    assert sizes.min() >= 1 and sizes.max() <= 4 and np.all(starts + sizes <= spatial)
    out = shuffle_blocks(x, starts, sizes, rng)
    assert np.array_equal(out[1], 2 * out[0])
    covered = np.zeros(spatial, dtype=int)
    boxes = [
        tuple(slice(a, a + s) for a, s in zip(st, si, strict=True))
        for st, si in zip(starts, sizes, strict=True)
    ]
    for box in boxes:
        covered[box] += 1
    assert np.array_equal(out[:, covered == 0], x[:, covered == 0])  # nothing outside the blocks moves
    alone = [box for box in boxes if np.all(covered[box] == 1)]
    assert len(alone) > 20
    for box in alone:
        assert np.array_equal(np.sort(out[0][box], axis=None), np.sort(x[0][box], axis=None))
    assert not np.array_equal(out, x)


@pytest.mark.parametrize("spatial", [(32, 48, 40), (64, 64)])
def test_painting_changes_exactly_its_boxes(spatial):
    for seed in range(5):
        rng = np.random.RandomState(seed)
        x = np.full((2, *spatial), 2.0, dtype=np.float32)  # outside the noise range [0, 1)
        for outpainting in (False, True):
            boxes = draw_paint_boxes(rng, spatial, outpaint=outpainting)
            assert (1 if outpainting else 0) <= len(boxes) <= 5
            inside = np.zeros(spatial, dtype=bool)
            for box in boxes:
                for s, b in zip(spatial, box, strict=True):
                    side = b.stop - b.start
                    low, high = (s - 4 * s // 7, s - 3 * s // 7) if outpainting else (s // 6, s // 3)
                    assert low <= side <= high and b.start >= 3 and b.stop <= s - 3
                inside[box] = True
            out = (outpaint if outpainting else inpaint)(x, boxes, rng)
            kept, noise = (inside, ~inside) if outpainting else (~inside, inside)
            assert out.shape == x.shape and np.all(out[:, kept] == 2.0)
            assert np.all((out[:, noise] >= 0.0) & (out[:, noise] < 1.0))


def test_models_genesisd_corrupts_and_keeps_the_target():
    x = torch.rand(1, 32, 32, 32)
    transform = ModelsGenesisd(flip_rate=0.0, nonlinear_rate=1.0, paint_rate=0.0)
    transform.set_random_state(0)
    d = transform({"global_0": x})
    assert torch.equal(d["global_0"], x)
    corrupted = d[CORRUPTED_KEY]
    assert corrupted.shape == x.shape and corrupted.dtype == torch.float32
    assert corrupted.min() >= 0 and corrupted.max() <= 1 and not torch.equal(corrupted, x)
    again = ModelsGenesisd(flip_rate=0.0, nonlinear_rate=1.0, paint_rate=0.0)
    again.set_random_state(0)
    assert torch.equal(again({"global_0": x})[CORRUPTED_KEY], corrupted)  # seeded
    flipping = ModelsGenesisd("view", "corrupted", flip_rate=1.0)
    flipping.set_random_state(1)
    image = torch.rand(1, 64, 48)
    d = flipping({"view": image})
    flips = [image.flip([*axes]) for r in range(3) for axes in itertools.combinations((1, 2), r)]
    assert any(torch.equal(d["view"], f) for f in flips) and d["corrupted"].shape == image.shape


def test_genesis_transforms_is_one_flat_compose():
    pipeline = genesis_transforms(global_size=32, pixdim=6.0, augment=False)
    assert isinstance(pipeline.transforms[-1], ModelsGenesisd)
    assert not any(isinstance(t, mt.Compose) for t in pipeline.transforms)  # CacheDataset caches the front


# ---------------------------------------------------------------- methods


def _naive_masked_cell_loss(x, voxel_mask, pred, cell):
    """MAE's loss written out: for every ``cell``-voxel cube whose voxels are all masked, the mean squared
    error of the prediction against the cube's voxels (C order) normalised by their mean and unbiased
    variance, averaged over those cubes."""
    terms = []
    b_size, _, *spatial = x.shape
    grid = [s // cell for s in spatial]
    for b in range(b_size):
        for n, (i, j, k) in enumerate(itertools.product(*[range(g) for g in grid])):
            box = (
                slice(cell * i, cell * i + cell),
                slice(cell * j, cell * j + cell),
                slice(cell * k, cell * k + cell),
            )
            if not voxel_mask[(b, *box)].all():
                assert not voxel_mask[(b, *box)].any(), "a cell is partly masked"
                continue
            voxels = x[(b, 0, *box)].flatten().double()
            target = (voxels - voxels.mean()) / (voxels.var(unbiased=True) + NORM_PIX_EPS).sqrt()
            terms.append(((pred[b, n].double() - target) ** 2).mean())
    return torch.stack(terms).mean().item(), len(terms)


def test_mae_step_predicts_the_masked_16_voxel_cells():
    torch.manual_seed(0)
    method = MAE(
        feature_size=12, decoder_dim=32, decoder_depth=1, decoder_num_heads=4, img_size=64, mask_ratio=0.5
    )
    predictions = []
    method.decoder.register_forward_hook(lambda module, inputs, output: predictions.append(output.detach()))
    x = torch.rand(2, 1, 64, 32, 32)  # a 4 x 2 x 2 grid of 16-voxel cells, 8 of them masked per sample
    torch.manual_seed(1)
    losses = method({"global_0": x})
    assert set(losses) == {"loss", "reconstruction"} and torch.isfinite(losses["loss"])
    assert predictions[0].shape == (2, 16, 16**3)  # one prediction of 16³ voxels per cell
    torch.manual_seed(1)  # the same mask again, expanded to voxels
    voxel_mask = upsample_mask(patch_mask_for(x, 0.5, 16), 2)
    assert voxel_mask.flatten(1).sum(1).tolist() == [8 * 16**3] * 2
    expected, masked_cells = _naive_masked_cell_loss(x, voxel_mask, predictions[0], 16)
    assert masked_cells == 16
    assert losses["loss"].item() == pytest.approx(expected, rel=1e-5)
    losses["loss"].backward()
    assert method.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert method.encoder.layers4[0].blocks[0].attn.qkv.weight.grad.abs().sum() > 0  # the last stage learns
    assert method.mask_token.grad.abs().sum() > 0
    assert method.decoder.pos_embed.grad.abs().sum() > 0
    assert method.export_encoder() is method.encoder
    with pytest.raises(ValueError, match="multiple of the token stride 16"):
        MAE(feature_size=12, mask_patch_size=24)
    with pytest.raises(ValueError, match="img_size 80"):
        MAE(feature_size=12, img_size=80)


def test_mae_shapes_at_64_and_96():
    """Mask grid, masked cells and prediction shape at two view sizes (the decoder run on a stand-in
    stride-32 map, so that no 96³ encoder pass is needed)."""
    for size, cells, masked in ((64, 4**3, 48), (96, 6**3, 162)):
        method = MAE(feature_size=12, decoder_dim=8, decoder_depth=1, decoder_num_heads=2, img_size=size)
        assert method.decoder.pos_embed.shape == (1, 8, size // 16, size // 16, size // 16)
        x = torch.zeros(2, 1, size, size, size)
        mask = patch_mask_for(x, method.mask_ratio, method.mask_patch_size)
        assert token_mask(mask).shape == (2, cells) and token_mask(mask).sum(1).tolist() == [masked] * 2
        assert patchify(x, 16).shape == (2, cells, 16**3)
        last_map = torch.rand(2, method.encoder.out_dim, size // 32, size // 32, size // 32)
        assert method.decoder(last_map).shape == (2, cells, 16**3)


def test_mae_position_embedding_adapts_to_the_grid():
    decoder = MAE(feature_size=12, decoder_dim=8, decoder_depth=1, decoder_num_heads=2, img_size=64).decoder
    assert decoder.pos_embed.shape == (1, 8, 4, 4, 4)
    assert torch.equal(decoder.position_embedding((4, 4, 4)), tokens(decoder.pos_embed))
    with torch.no_grad():
        decoder.pos_embed.fill_(0.5)
    resized = decoder.position_embedding((3, 1, 4))
    assert resized.shape == (1, 12, 8) and torch.allclose(resized, torch.full_like(resized, 0.5))


def test_models_genesis_step_restores_the_original():
    torch.manual_seed(0)
    method = ModelsGenesis(feature_size=12)
    assert method.encoder is method.net.swinViT and method.export_encoder() is method.encoder
    ours = method.encoder.state_dict()
    reference = SwinEncoder(in_channels=1, feature_size=12).state_dict()
    assert ours.keys() == reference.keys() and all(ours[k].shape == reference[k].shape for k in ours)
    target = torch.rand(2, 1, 64, 32, 32)
    corrupted = torch.rand(2, 1, 64, 32, 32)
    outputs = []
    method.net.register_forward_hook(lambda module, inputs, output: outputs.append(output.detach()))
    losses = method({"global_0": target, CORRUPTED_KEY: corrupted})
    assert losses["loss"].item() == pytest.approx(
        F.mse_loss(torch.sigmoid(outputs[0]), target).item(), rel=1e-6
    )
    assert set(losses) == {"loss", "restoration"} and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert method.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    with pytest.raises(KeyError, match=CORRUPTED_KEY):
        method({"global_0": target})
