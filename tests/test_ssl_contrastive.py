"""The contrastive methods: SimCLR's NT-Xent and MoCo v3's ctr against naive references and hand cases,
MoCo v3's key gathering over two processes, and one step of each method."""

import math
import subprocess
import sys

import pytest
import torch

from common.losses import moco
from common.losses.moco import ctr, symmetric_ctr
from common.losses.ntxent import nt_xent_loss
from common.ssl.mocov3 import MoCoV3
from common.ssl.simclr import SimCLR


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a @ b).item() / (a.norm().item() * b.norm().item())


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """Eq. 1 of Chen et al. 2020 anchor by anchor: view ``i`` of the 2N has its positive at ``i +- N``."""
    z, n = torch.cat([z1, z2]), z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        denominator = sum(math.exp(cosine(z[i], z[k]) / tau) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(cosine(z[i], z[positive]) / tau) / denominator)
    return total / (2 * n)


def naive_ctr(q: torch.Tensor, keys: torch.Tensor, offset: int, tau: float) -> float:
    """Algorithm 1's ``ctr`` written out: mean over queries of -log softmax at the own key, times 2 tau."""
    total = 0.0
    for i in range(q.shape[0]):
        logits = [cosine(q[i], keys[j]) / tau for j in range(keys.shape[0])]
        total += -logits[offset + i] + math.log(sum(math.exp(v) for v in logits))
    return total / q.shape[0] * 2 * tau


def test_nt_xent_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    for tau in (0.1, 0.5):
        assert nt_xent_loss(z1, z2, tau).item() == pytest.approx(naive_nt_xent(z1, z2, tau), abs=1e-6)


def test_nt_xent_hand_cases():
    e1, e2 = torch.eye(2, dtype=torch.float64)
    tau = 0.5
    aligned = nt_xent_loss(torch.stack([e1, e2]), torch.stack([e1, e2]), tau)
    # every anchor: positive similarity 1, two orthogonal negatives -> log(1 + 2 exp(-1 / tau))
    assert aligned.item() == pytest.approx(math.log(1 + 2 * math.exp(-1 / tau)), abs=1e-12)
    swapped = nt_xent_loss(torch.stack([e1, e2]), torch.stack([e2, e1]), tau)
    # every anchor: positive orthogonal, negatives 0, 0 and 1 -> log(2 + exp(1 / tau))
    assert swapped.item() == pytest.approx(math.log(2 + math.exp(1 / tau)), abs=1e-12)
    assert aligned < swapped
    # all four embeddings equal: every candidate ties, log(2N - 1) whatever the temperature
    same = torch.ones(2, 3, dtype=torch.float64)
    for t in (0.05, 1.0):
        assert nt_xent_loss(same, 3 * same, t).item() == pytest.approx(math.log(3), abs=1e-12)
    # a single sample has no negative: the loss is zero
    assert nt_xent_loss(e1[None], e2[None], tau).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="one shape"):
        nt_xent_loss(torch.ones(2, 3), torch.ones(3, 3))


def test_nt_xent_pairing_scale_and_temperature():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    loss = nt_xent_loss(z1, z2, 0.2)
    assert nt_xent_loss(z1, z2[[1, 0, 2, 3]], 0.2).item() != pytest.approx(loss.item(), abs=1e-6)
    assert nt_xent_loss(3 * z1, 0.5 * z2, 0.2).item() == pytest.approx(loss.item(), abs=1e-12)  # cosine
    # aligned positives with orthogonal negatives: a lower temperature sharpens, the loss falls towards 0
    eye = torch.eye(4, dtype=torch.float64)
    values = [nt_xent_loss(eye, eye, t).item() for t in (1.0, 0.5, 0.1, 0.02)]
    assert values == sorted(values, reverse=True) and values[-1] < 1e-20


def test_ctr_matches_the_formula_and_hand_case():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
    assert ctr(q, k, 0.2).item() == pytest.approx(naive_ctr(q, k, 0, 0.2), abs=1e-6)
    eye = torch.eye(2, dtype=torch.float64)
    # logits I / tau: -log(e^(1/tau) / (e^(1/tau) + 1)) per query, times 2 tau
    assert ctr(eye, eye, 0.2).item() == pytest.approx(0.4 * math.log(1 + math.exp(-5)), abs=1e-12)
    assert ctr(eye, eye.flip(0), 0.2).item() == pytest.approx(0.4 * math.log(1 + math.exp(5)), abs=1e-12)


def test_symmetric_ctr_sums_both_directions():
    g = torch.Generator().manual_seed(3)
    q1, q2, k1, k2 = torch.randn(4, 3, 6, generator=g, dtype=torch.float64)
    total = symmetric_ctr(q1, q2, k1, k2, 0.2)
    assert total.item() == pytest.approx(naive_ctr(q1, k2, 0, 0.2) + naive_ctr(q2, k1, 0, 0.2), abs=1e-6)
    assert symmetric_ctr(q2, q1, k2, k1, 0.2).item() == pytest.approx(total.item(), abs=1e-12)
    assert symmetric_ctr(q1, q2, k2, k1, 0.2).item() != pytest.approx(total.item(), abs=1e-6)


RANK_SCRIPT = """
import importlib.util, sys, torch, torch.distributed as dist
spec = importlib.util.spec_from_file_location("moco", sys.argv[1])
moco = importlib.util.module_from_spec(spec)
spec.loader.exec_module(moco)
rank = int(sys.argv[2])
dist.init_process_group("gloo", init_method=sys.argv[3], rank=rank, world_size=2)
q, k = torch.randn(2, 2, 3, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
print(repr(moco.ctr(q[rank], k[rank], 0.2).item()))
dist.destroy_process_group()
"""


def test_ctr_gathers_keys_over_processes(tmp_path):
    """Two gloo processes (the loss module loaded alone, to start fast): rank r's queries are matched
    against the keys of both ranks, positives at r * N + i."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    init = f"file://{tmp_path / 'rendezvous'}"
    ranks = [
        subprocess.Popen(
            [sys.executable, str(script), moco.__file__, str(r), init], stdout=subprocess.PIPE, text=True
        )
        for r in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0]
    q, k = torch.randn(2, 2, 3, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    keys = torch.cat([k[0], k[1]])
    for r in range(2):
        assert float(outputs[r]) == pytest.approx(naive_ctr(q[r], keys, 3 * r, 0.2), abs=1e-6)
        assert float(outputs[r]) != pytest.approx(naive_ctr(q[r], k[r], 0, 0.2), abs=1e-6)


def two_views() -> dict[str, torch.Tensor]:
    return {"global_0": torch.rand(2, 1, 32, 32, 32), "global_1": torch.rand(2, 1, 32, 32, 32)}


def test_simclr_step_reaches_encoder_and_head():
    torch.manual_seed(0)
    method = SimCLR(feature_size=12, projection_hidden_dim=64, projection_dim=32, temperature=0.5)
    losses = method(two_views())
    assert set(losses) == {"loss", "nt_xent"} and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert method.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert method.projector[0].weight.grad.abs().sum() > 0
    assert method.export_encoder() is method.encoder
    with pytest.raises(ValueError):
        method({"global_0": torch.rand(2, 1, 32, 32, 32)})  # SimCLR needs two views


def test_mocov3_step_and_momentum_update():
    torch.manual_seed(0)
    method = MoCoV3(feature_size=12, mlp_hidden_dim=64, projection_dim=32, temperature=0.2)
    losses = method(two_views())
    assert set(losses) == {"loss", "contrastive"} and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert method.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert method.predictor[0].weight.grad.abs().sum() > 0
    momentum_params = [*method.momentum_encoder.parameters(), *method.momentum_projector.parameters()]
    assert all(p.grad is None and not p.requires_grad for p in momentum_params)
    assert method.export_encoder() is method.encoder  # MoCo v3 evaluates the query encoder

    before = [{n: p.clone() for n, p in t.named_parameters()} for t, _ in method.teacher_pairs()]
    torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=1.0).step()
    method.momentum = 0.9
    method.update_teacher()
    for (teacher, student), old in zip(method.teacher_pairs(), before, strict=True):
        new = dict(student.named_parameters())
        for name, p in teacher.named_parameters():
            torch.testing.assert_close(p, 0.9 * old[name] + 0.1 * new[name], rtol=0, atol=1e-6)
    moved = method.momentum_encoder.patch_embed.proj.weight
    assert not torch.equal(moved, before[0]["patch_embed.proj.weight"])
