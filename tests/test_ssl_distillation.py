"""DINO, iBOT and SMIT: the losses against naive loops and hand cases (float64), the methods' forward,
backward and EMA teacher update on tiny Swin encoders."""

from __future__ import annotations

import math

import pytest
import torch

from common.losses.dino import DINOLoss, entropy, sharpened_targets
from common.losses.ibot import IBOTPatchLoss
from common.ssl.dino import DINO
from common.ssl.ibot import IBOT
from common.ssl.masking import token_mask
from common.ssl.smit import SMIT
from common.transforms.masking import upsample_mask

TOL = 1e-6


def _log_softmax_naive(row: list[float], temp: float) -> list[float]:
    scaled = [v / temp for v in row]
    top = max(scaled)
    log_norm = top + math.log(sum(math.exp(v - top) for v in scaled))
    return [v - log_norm for v in scaled]


def _cross_entropy_naive(teacher_row, center, teacher_temp, student_row, student_temp) -> float:
    target = [
        math.exp(v)
        for v in _log_softmax_naive([t - c for t, c in zip(teacher_row, center, strict=True)], teacher_temp)
    ]
    log_p = _log_softmax_naive(student_row, student_temp)
    return -sum(q * lp for q, lp in zip(target, log_p, strict=True))


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-300).log()).sum(-1)


# ---------------------------------------------------------------- DINO loss


def test_dino_loss_matches_naive_loop_over_pairs_and_samples():
    g = torch.Generator().manual_seed(0)
    batch, dim, temp = 4, 7, 0.05
    student = [torch.randn(batch, dim, generator=g, dtype=torch.float64) for _ in range(4)]
    teacher = [torch.randn(batch, dim, generator=g, dtype=torch.float64) for _ in range(2)]
    loss_fn = DINOLoss(dim).double()
    loss_fn.center.copy_(torch.randn(dim, generator=g, dtype=torch.float64))
    center = loss_fn.center.tolist()

    total, pairs = 0.0, 0
    for i, t_view in enumerate(teacher):
        for v, s_view in enumerate(student):
            if v == i:
                continue
            per_sample = [
                _cross_entropy_naive(t_view[b].tolist(), center, temp, s_view[b].tolist(), 0.1)
                for b in range(batch)
            ]
            total += sum(per_sample) / batch
            pairs += 1
    assert pairs == 2 * 3
    assert loss_fn(student, teacher, temp).item() == pytest.approx(total / pairs, abs=TOL)


def _kl_naive(teacher_row, center, teacher_temp, student_row, student_temp) -> float:
    """KL(P_t || P_s) = sum_k P_t[k] (log P_t[k] - log P_s[k]), written out."""
    log_t = _log_softmax_naive([t - c for t, c in zip(teacher_row, center, strict=True)], teacher_temp)
    log_s = _log_softmax_naive(student_row, student_temp)
    return sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_t, log_s, strict=True))


@pytest.mark.parametrize("exclude_same_view", [True, False])
def test_dino_loss_minus_teacher_entropy_is_the_mean_kl_over_pairs(exclude_same_view):
    """DINO Sec. 5.3: H(P_t, P_s) = h(P_t) + KL(P_t || P_s); the KL part against a naive loop."""
    g = torch.Generator().manual_seed(1)
    batch, dim, temp = 3, 6, 0.04
    student = [torch.randn(batch, dim, generator=g, dtype=torch.float64) for _ in range(3)]
    teacher = [torch.randn(batch, dim, generator=g, dtype=torch.float64) for _ in range(2)]
    loss_fn = DINOLoss(dim).double()
    loss_fn.center.copy_(torch.randn(dim, generator=g, dtype=torch.float64))
    center = loss_fn.center.tolist()
    kls = [
        _kl_naive(teacher[i][b].tolist(), center, temp, student[v][b].tolist(), 0.1)
        for i in range(2)
        for v in range(3)
        if v != i or not exclude_same_view
        for b in range(batch)
    ]
    loss = loss_fn(student, teacher, temp, exclude_same_view=exclude_same_view)
    assert (loss - loss_fn.teacher_entropy).item() == pytest.approx(sum(kls) / len(kls), abs=TOL)


def test_teacher_entropy_hand_cases():
    uniform = torch.full((2, 4), 0.25, dtype=torch.float64)
    assert entropy(uniform).tolist() == pytest.approx([math.log(4)] * 2)
    assert entropy(torch.tensor([[1.0, 0.0, 0.0]])).item() == 0.0


def test_dino_loss_identical_one_hot_views_give_the_minimum():
    dim = 5
    one_hot = torch.nn.functional.one_hot(torch.tensor([2, 2]), dim).double() * 10.0
    loss_fn = DINOLoss(dim).double()
    # teacher temperature 0.01: the target is one-hot (exp(-1000) = 0); the student's logit gap is
    # 10 / 0.1 = 100, so -log p = log(1 + 4 exp(-100)), i.e. 0 to double precision
    same = loss_fn([one_hot, one_hot], [one_hot, one_hot], 0.01).item()
    assert same == pytest.approx(0.0, abs=1e-12)
    # the student sure of another class pays the full logit gap: 100 + log(1 + 4 exp(-100))
    other = torch.nn.functional.one_hot(torch.tensor([0, 0]), dim).double() * 10.0
    assert DINOLoss(dim).double()([other, other], [one_hot, one_hot], 0.01).item() == pytest.approx(
        100.0, abs=1e-9
    )


def test_dino_loss_is_minimal_when_the_student_equals_the_target():
    g = torch.Generator().manual_seed(1)
    teacher = [torch.randn(3, 6, generator=g, dtype=torch.float64)]
    target = sharpened_targets(teacher[0], torch.zeros(6, dtype=torch.float64), 0.07)
    matched = target.log() * 0.1  # student logits whose softmax at temperature 0.1 is the target
    best = DINOLoss(6).double()([matched, matched], teacher, 0.07).item()
    assert best == pytest.approx(_entropy(target).mean().item(), abs=TOL)
    perturbed = matched + 0.05 * torch.randn(3, 6, generator=g, dtype=torch.float64)
    assert DINOLoss(6).double()([matched, perturbed], teacher, 0.07).item() > best


def test_dino_loss_centring_subtracts_the_running_center_and_updates_it_by_its_formula():
    g = torch.Generator().manual_seed(2)
    dim = 6
    student = [torch.randn(3, dim, generator=g, dtype=torch.float64) for _ in range(3)]
    teacher = [torch.randn(3, dim, generator=g, dtype=torch.float64) for _ in range(2)]
    center = torch.randn(dim, generator=g, dtype=torch.float64)

    centred = DINOLoss(dim).double()
    centred.center.copy_(center)
    value = centred(student, teacher, 0.04).item()
    # the same loss with a zero centre and the centre subtracted from the teacher by hand
    by_hand = DINOLoss(dim).double()([s.clone() for s in student], [t - center for t in teacher], 0.04).item()
    assert value == pytest.approx(by_hand, abs=TOL)
    assert value != pytest.approx(DINOLoss(dim).double()(student, teacher, 0.04).item(), abs=1e-3)

    expected = 0.9 * center + 0.1 * torch.cat(teacher).mean(0)
    assert torch.allclose(centred.center, expected, atol=1e-12, rtol=0)


def test_dino_loss_teacher_equal_to_its_center_gives_a_uniform_target():
    dim = 4
    center = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=torch.float64)
    teacher = [center.expand(2, dim).clone()]
    student = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    loss_fn = DINOLoss(dim).double()
    loss_fn.center.copy_(center)
    # uniform target: -mean_k log p_s; the second row is uniform (log 4), the first by hand
    first = -sum(_log_softmax_naive([0.1, 0.2, 0.3, 0.4], 0.1)) / 4
    expected = (first + math.log(4)) / 2
    assert loss_fn([student, student], teacher, 0.04).item() == pytest.approx(expected, abs=TOL)


def test_lower_teacher_temperature_sharpens_the_target():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 10, generator=g, dtype=torch.float64)
    center = torch.zeros(10, dtype=torch.float64)
    entropies = [_entropy(sharpened_targets(logits, center, t)) for t in (1.0, 0.07, 0.04)]
    assert torch.all(entropies[0] > entropies[1]) and torch.all(entropies[1] > entropies[2])
    assert torch.allclose(sharpened_targets(logits, center, 0.04).sum(-1), torch.ones(5, dtype=torch.float64))


def test_dino_loss_needs_a_pair_of_different_views():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="pair"):
        DINOLoss(3)([x], [x], 0.04)


# ---------------------------------------------------------------- iBOT patch loss


def _patch_inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    views, batch, tokens, dim = 2, 3, 5, 6
    student = [torch.randn(batch, tokens, dim, generator=g, dtype=torch.float64) for _ in range(views)]
    teacher = [torch.randn(batch, tokens, dim, generator=g, dtype=torch.float64) for _ in range(views)]
    masks = [torch.rand(batch, tokens, generator=g) < 0.5 for _ in range(views)]
    masks[0][1] = False  # an image without masked tokens contributes 0
    masks[1][2] = True
    return student, teacher, masks


def _masked_token_mean_naive(per_token, student, teacher, masks, center, teacher_temp) -> float:
    """``per_token(teacher row, center, teacher_temp, student row, 0.1)`` averaged over each image's masked
    tokens (0 without any), then over images, then over views: iBOT's normalisation, written out."""
    per_view = []
    for s_view, t_view, m_view in zip(student, teacher, masks, strict=True):
        per_image = []
        for b in range(s_view.shape[0]):
            masked = [n for n in range(s_view.shape[1]) if m_view[b, n]]
            values = [
                per_token(t_view[b, n].tolist(), center, teacher_temp, s_view[b, n].tolist(), 0.1)
                for n in masked
            ]
            per_image.append(sum(values) / max(1, len(masked)))
        per_view.append(sum(per_image) / len(per_image))
    return sum(per_view) / len(per_view)


def test_ibot_patch_loss_matches_naive_loop_over_masked_tokens():
    student, teacher, masks = _patch_inputs(4)
    loss_fn = IBOTPatchLoss(6).double()
    loss_fn.center.copy_(torch.linspace(-1, 1, 6, dtype=torch.float64))
    center = loss_fn.center.tolist()
    expected = _masked_token_mean_naive(_cross_entropy_naive, student, teacher, masks, center, 0.06)
    assert loss_fn(student, teacher, masks, 0.06).item() == pytest.approx(expected, abs=TOL)


def test_ibot_patch_loss_minus_teacher_entropy_is_the_masked_mean_kl():
    student, teacher, masks = _patch_inputs(7)
    loss_fn = IBOTPatchLoss(6).double()
    loss_fn.center.copy_(torch.linspace(-1, 1, 6, dtype=torch.float64))
    center = loss_fn.center.tolist()
    expected = _masked_token_mean_naive(_kl_naive, student, teacher, masks, center, 0.05)
    loss = loss_fn(student, teacher, masks, 0.05)
    assert (loss - loss_fn.teacher_entropy).item() == pytest.approx(expected, abs=TOL)


def test_ibot_patch_loss_ignores_unmasked_tokens():
    student, teacher, masks = _patch_inputs(5)
    reference = IBOTPatchLoss(6).double()(student, teacher, masks, 0.05).item()
    changed_s = [s.clone() for s in student]
    changed_t = [t.clone() for t in teacher]
    for s, t, m in zip(changed_s, changed_t, masks, strict=True):
        s[~m] = 100.0 * torch.randn_like(s[~m])
        t[~m] = -100.0 * torch.randn_like(t[~m])
    assert IBOTPatchLoss(6).double()(changed_s, changed_t, masks, 0.05).item() == pytest.approx(
        reference, abs=TOL
    )
    # a masked token does count
    changed_s[1][masks[1]] += 3.0 * torch.randn_like(changed_s[1][masks[1]])
    assert IBOTPatchLoss(6).double()(changed_s, changed_t, masks, 0.05).item() != pytest.approx(
        reference, abs=1e-4
    )


def test_ibot_patch_center_update_follows_its_formula():
    student, teacher, masks = _patch_inputs(6)
    loss_fn = IBOTPatchLoss(6, center_momentum=0.8).double()
    start = torch.full((6,), 0.5, dtype=torch.float64)
    loss_fn.center.copy_(start)
    loss_fn(student, teacher, masks, 0.04)
    expected = 0.8 * start + 0.2 * torch.stack(teacher).mean((0, 1, 2))
    assert torch.allclose(loss_fn.center, expected, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- masks


def test_token_mask_follows_the_voxel_blocks():
    patch_mask = torch.zeros(1, 32, 16, 16, dtype=torch.bool)  # a 64 x 32 x 32 input
    patch_mask[:, 16:] = True
    assert token_mask(patch_mask, stride=32).tolist() == [[False, True]]
    patch_mask[:, 8:16, 8:] = True  # the second 16-voxel cell along x, the upper half along y
    expected = [[i >= 2 or (i == 1 and j == 1) for i in range(4) for j in range(2) for k in range(2)]]
    assert (
        token_mask(patch_mask).tolist() == expected
    )  # stride 16 by default, C order over the 4 x 2 x 2 grid


@pytest.mark.parametrize("size", [64, 96])
def test_ibot_mask_ratio_and_probability(size):
    method = IBOT(feature_size=12, out_dim=16, hidden_dim=8, bottleneck_dim=8, mask_ratio=(0.5, 0.5))
    x = torch.zeros(3, 1, size, size, size)
    method.mask_probability = 0.0
    assert not method.draw_mask(x).any()
    method.mask_probability = 1.0
    mask = method.draw_mask(x)
    assert mask.shape == (3, size // 2, size // 2, size // 2)
    cells = (size // 16) ** 3  # 64 stride-16 tokens at 64³, 216 at 96³
    assert token_mask(mask).shape == (3, cells)
    assert token_mask(mask).sum(1).tolist() == [cells // 2] * 3
    # each 16-voxel cell (8 patch-embedding cells per axis) is masked whole
    assert torch.equal(upsample_mask(token_mask(mask).view(3, *[size // 16] * 3), 8), mask)
    with pytest.raises(ValueError, match="multiple of the token stride 16"):
        IBOT(feature_size=12, out_dim=16, hidden_dim=8, bottleneck_dim=8, mask_patch_size=8)


@pytest.mark.parametrize("build", [IBOT, SMIT], ids=["ibot", "smit"])
def test_patch_distillation_on_the_stride_16_tokens(build):
    """At 64³: the patch loss gets 4³ = 64 tokens per view from the student's and the teacher's
    stride-16 stage, and the token masks of the drawn patch mask."""
    torch.manual_seed(0)
    method = build(**TINY, **({"mask_ratio": (0.5, 0.5), "mask_probability": 1.0} if build is IBOT else {}))
    method.teacher_temp = 0.04
    calls, stage_maps = [], []
    method.patch_criterion.register_forward_pre_hook(lambda module, args: calls.append(args))
    for encoder in (method.encoder, method.teacher_encoder):
        encoder.layers3[0].register_forward_hook(lambda module, args, out: stage_maps.append(out))
    g = torch.Generator().manual_seed(0)
    batch = {f"global_{i}": torch.rand(1, 1, 64, 64, 64, generator=g) for i in range(2)}
    torch.manual_seed(1)
    method(batch)
    torch.manual_seed(1)  # the same mask again
    expected_mask = token_mask(method.draw_mask(torch.cat([batch["global_0"], batch["global_1"]])))
    student, teacher, masks, _ = calls[0]
    assert [s.shape for s in student] == [(1, 64, 64)] * 2 and [t.shape for t in teacher] == [(1, 64, 64)] * 2
    assert torch.equal(torch.cat(masks), expected_mask)
    assert expected_mask.sum(1).tolist() == ([32, 32] if build is IBOT else [45, 45])  # 0.5 / 0.7 of 64
    assert [m.shape[2:] for m in stage_maps] == [(4, 4, 4)] * 2  # the student's and teacher's stride 16
    assert method.patch_projection.in_features == method.encoder.feature_channels[3] == 96


# ---------------------------------------------------------------- methods


def _views(shape, num_global, num_local=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = {f"global_{i}": torch.rand(2, 1, *shape, generator=g) for i in range(num_global)}
    batch.update({f"local_{i}": torch.rand(2, 1, 32, 32, 32, generator=g) for i in range(num_local)})
    return batch


TINY = dict(feature_size=12, out_dim=64, hidden_dim=32, bottleneck_dim=16)
CASES = {
    "dino": (lambda: DINO(**TINY), ((32, 32, 32), 2, 1), ("loss", "dino", "dino_kl")),
    # half of the 4 x 2 x 2 stride-16 tokens of each 64 x 32 x 32 view is masked
    "ibot": (
        lambda: IBOT(**TINY, mask_ratio=(0.5, 0.5), mask_probability=1.0),
        ((64, 32, 32), 2, 0),
        ("loss", "cls", "patch", "cls_kl", "patch_kl"),
    ),
    "smit": (
        lambda: SMIT(**TINY, mask_ratio=0.5),
        ((64, 32, 32), 2, 0),
        ("loss", "reconstruction", "patch", "global", "global_kl", "patch_kl"),
    ),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def trained_step(request):
    """One forward and backward of each method (shared by the tests below to keep the CPU time low)."""
    build, (shape, num_global, num_local), keys = CASES[request.param]
    torch.manual_seed(0)
    method = build()
    method.teacher_temp = 0.04
    losses = method(_views(shape, num_global, num_local))
    losses["loss"].backward()
    return request.param, method, losses, keys


def test_method_losses_are_finite_and_named(trained_step):
    name, _, losses, keys = trained_step
    assert set(losses) == set(keys)
    for key, value in losses.items():
        assert torch.isfinite(value), f"{name}: {key} = {value}"
        assert value.item() > 0.0, f"{name}: {key} is zero"
    assert losses["loss"].requires_grad
    assert all(not v.requires_grad for k, v in losses.items() if k != "loss")


def test_gradients_reach_the_student_and_not_the_teacher(trained_step):
    name, method, _, _ = trained_step
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.head.parameters())
    if name in ("ibot", "smit"):
        assert method.mask_token.grad is not None and method.mask_token.grad.abs().sum() > 0
    if name == "smit":
        assert method.reconstruction_head.proj.weight.grad.abs().sum() > 0
    for teacher, _ in method.teacher_pairs():
        assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert method.export_encoder() is method.teacher_encoder


def test_teacher_follows_the_ema_formula(trained_step):
    name, method, _, _ = trained_step
    with torch.no_grad():
        for p in method.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    pairs = method.teacher_pairs()
    teachers = [method.teacher_encoder, method.teacher_head]
    if name != "dino":
        teachers.insert(1, method.teacher_patch_projection)
    assert [t for t, _ in pairs] == teachers
    before = [{k: v.clone() for k, v in t.named_parameters()} for t, _ in pairs]
    method.momentum = 0.9
    method.update_teacher()
    for (teacher, student), old in zip(pairs, before, strict=True):
        student_params = dict(student.named_parameters())
        for key, value in teacher.named_parameters():
            expected = 0.9 * old[key] + 0.1 * student_params[key]
            assert torch.allclose(value, expected, atol=1e-6, rtol=0), key
