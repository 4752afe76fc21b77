"""SimMIM and the pieces every masked method shares: block masks, mask-token substitution, the l1 loss."""

import pytest
import torch
from monai.networks.nets import SwinUNETR

from common.losses import masked_l1_loss
from common.networks import SwinEncoder
from common.ssl import SimMIM
from common.ssl.masking import masked_patches
from common.transforms import random_block_mask, upsample_mask


def test_masked_l1_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 3, 4, 4, 4, generator=g, dtype=torch.float64)
    target = torch.rand(2, 3, 4, 4, 4, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 4, 4, 4, generator=g) > 0.5
    total, count = 0.0, 0
    for b in range(2):
        for idx in mask[b].nonzero().tolist():
            for c in range(3):
                total += abs(pred[(b, c, *idx)].item() - target[(b, c, *idx)].item())
                count += 1
    assert masked_l1_loss(pred, target, mask).item() == pytest.approx(total / count, abs=1e-6)


def test_masked_l1_hand_cases():
    target = torch.zeros(1, 1, 2, 2)
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    mask = torch.tensor([[[True, False], [False, True]]])
    assert masked_l1_loss(pred, target, mask).item() == pytest.approx((1 + 4) / 2)
    assert masked_l1_loss(target, target, mask).item() == 0.0  # a perfect reconstruction
    visible_changed = pred.clone()
    visible_changed[0, 0, 0, 1] = 100.0  # an unmasked voxel does not count
    assert masked_l1_loss(visible_changed, target, mask).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="shapes differ"):
        masked_l1_loss(pred, target, mask[:, :1])


def test_block_mask_has_the_exact_ratio_in_whole_blocks():
    mask = random_block_mask(3, (8, 8, 8), ratio=0.6, block=4, generator=torch.Generator().manual_seed(1))
    assert mask.shape == (3, 8, 8, 8)
    cells = mask.view(3, 2, 4, 2, 4, 2, 4).permute(0, 1, 3, 5, 2, 4, 6).reshape(3, 8, 64)
    assert torch.all(cells.all(-1) | ~cells.any(-1))  # each 4^3 block is all masked or all visible
    assert cells.all(-1).sum(1).tolist() == [round(0.6 * 8)] * 3
    assert not torch.equal(mask[0], mask[1])  # drawn per sample
    with pytest.raises(ValueError, match="not divisible"):
        random_block_mask(1, (6, 6), 0.5, block=4)
    assert upsample_mask(torch.tensor([[[True, False]]]), 2).tolist() == [[[True, True, False, False]] * 2]


def test_swin_encoder_weights_are_those_of_swinunetr():
    ours = SwinEncoder(in_channels=1, feature_size=12).state_dict()
    theirs = SwinUNETR(in_channels=1, out_channels=2, feature_size=12).swinViT.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    assert SwinEncoder(feature_size=12)(torch.rand(1, 1, 32, 32, 32)).shape == (1, 192)
    assert SwinEncoder(feature_size=12, spatial_dims=2)(torch.rand(1, 1, 64, 64)).shape == (1, 192)


def test_mask_token_replaces_only_masked_patches():
    encoder = SwinEncoder(feature_size=12).eval()
    x = torch.rand(1, 1, 32, 32, 32)
    mask = torch.zeros(1, 16, 16, 16, dtype=torch.bool)
    mask[0, :8] = True
    token = torch.arange(12.0)
    seen = []
    handle = encoder.pos_drop.register_forward_hook(lambda m, i, o: seen.append(i[0]))  # after patch_embed
    with masked_patches(encoder, mask, token):
        encoder.features(x)
    encoder.features(x)  # the hook is gone after the block
    handle.remove()
    masked, plain = seen[0], seen[1]
    assert torch.equal(masked[0, :, 8:], plain[0, :, 8:])
    assert torch.equal(masked[0, :, :8], token.view(12, 1, 1, 1).expand(12, 8, 16, 16))


def test_simmim_step_reaches_encoder_and_token():
    torch.manual_seed(0)
    method = SimMIM(feature_size=12, mask_ratio=0.6, mask_patch_size=16)
    losses = method({"global_0": torch.rand(2, 1, 32, 32, 32)})
    assert set(losses) == {"loss", "reconstruction"} and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert method.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert method.mask_token.grad.abs().sum() > 0
    assert method.export_encoder() is method.encoder


def test_simmim_runs_in_2d():
    method = SimMIM(feature_size=12, spatial_dims=2, mask_patch_size=16)
    losses = method({"global_0": torch.rand(2, 1, 64, 64)})
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and method.encoder.patch_embed.proj.weight.grad is not None
