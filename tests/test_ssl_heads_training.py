"""Issue 17 item 3: DINO's head initialisation, per-parameter gradient clipping and ``freeze_last_layer``,
against the reference code's behaviour (DINO's ``utils.clip_gradients`` / ``cancel_gradients_last_layer``,
``DINOHead._init_weights``), on the collection's trainer and heads."""

import math

import pytest
import torch
from ignite.engine import Events
from torch import nn

from common.engines import FreezeLastLayerHandler, SSLTrainer, parameter_groups
from common.engines.ssl_trainer import clip_grad_per_parameter_
from common.networks.heads import DINOHead, trunc_normal_init_
from common.networks.swin import SwinEncoder
from common.ssl import SSLMethod
from common.ssl.coda import Coda


def test_dino_head_mlp_is_truncated_normal_002_with_zero_biases_and_unit_last_layer_norm():
    torch.manual_seed(0)
    head = DINOHead(256, out_dim=512, hidden_dim=1024, bottleneck_dim=128)
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert len(linears) == 3
    for layer in linears:
        w = layer.weight.detach()
        # PyTorch's default (Kaiming uniform) would give std 1/sqrt(3 * fan_in): 0.036 and 0.018 here
        assert w.std().item() == pytest.approx(0.02, rel=0.03)
        assert abs(w.mean().item()) < 1e-3
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    g = head.last_layer.parametrizations.weight.original0
    assert torch.equal(g, torch.ones_like(g)) and not g.requires_grad


def test_trunc_normal_init_truncates_at_two_and_has_the_truncated_normal_std():
    torch.manual_seed(0)
    layer = nn.Linear(1000, 1000)
    trunc_normal_init_(layer, std=1.0)  # bounds +-2 are two standard deviations here
    w = layer.weight.detach()
    assert w.abs().max().item() <= 2.0
    # std of N(0, 1) truncated to [-2, 2]: sqrt(1 - 2 * 2 * phi(2) / (Phi(2) - Phi(-2)))
    phi = math.exp(-2.0) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    assert w.std().item() == pytest.approx(math.sqrt(1 - 4 * phi / mass), rel=0.01)
    assert torch.equal(layer.bias, torch.zeros(1000))
    norm = nn.LayerNorm(4)
    trunc_normal_init_(norm)
    assert torch.equal(norm.weight, torch.ones(4)), "only linear layers are initialised"


def test_per_parameter_clipping_matches_the_formula_written_out():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3), nn.Linear(3, 1, bias=False))
    for i, p in enumerate(net.parameters()):
        p.grad = torch.randn_like(p) * (0.1 if i % 2 else 10.0)  # some norms below the bound, some above
    expected = []
    for p in net.parameters():
        norm = math.sqrt(sum(float(v) ** 2 for v in p.grad.flatten()))
        coef = 3.0 / (norm + 1e-6)
        expected.append(p.grad.clone() * (coef if coef < 1 else 1.0))
    clip_grad_per_parameter_(net.parameters(), 3.0)
    for p, e in zip(net.parameters(), expected, strict=True):
        assert torch.allclose(p.grad, e, rtol=1e-6)
    norms = [p.grad.norm().item() for p in net.parameters()]
    assert max(norms) == pytest.approx(3.0, rel=1e-5) and min(norms) < 1.0


class _TwoParameters(SSLMethod):
    """loss = ca . a + cb . b: the gradients are the constants ``ca`` (norm 10) and ``cb`` (norm 0.5)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2))
        self.encoder = nn.Identity()

    def teacher_pairs(self):
        return []

    def forward(self, batch):
        ca, cb = torch.tensor([6.0, 8.0, 0.0]), torch.tensor([0.3, 0.4])
        loss = (ca * self.a).sum() + (cb * self.b).sum() + 0.0 * batch["global_0"].sum()
        return {"loss": loss}


@pytest.mark.parametrize("mode", ["per_parameter", "global"])
def test_trainer_clips_each_parameter_or_the_global_norm(mode):
    method = _TwoParameters()
    optimizer = torch.optim.SGD(method.parameters(), lr=1.0)
    data = [{"global_0": torch.zeros(1, 1)}]
    SSLTrainer("cpu", 1, data, method, optimizer, clip_grad_norm=3.0, clip_grad_mode=mode).run()
    ca, cb = torch.tensor([6.0, 8.0, 0.0]), torch.tensor([0.3, 0.4])
    if mode == "per_parameter":  # ||ca|| = 10 clipped to 3, ||cb|| = 0.5 kept
        step_a, step_b = ca * 3.0 / (10.0 + 1e-6), cb
    else:  # both scaled by 3 / ||(ca, cb)||
        coef = 3.0 / (math.sqrt(100.0 + 0.25) + 1e-6)
        step_a, step_b = ca * coef, cb * coef
    assert torch.allclose(method.a.detach(), -step_a, rtol=1e-5)
    assert torch.allclose(method.b.detach(), -step_b, rtol=1e-5)
    with pytest.raises(ValueError, match="clip_grad_mode"):
        SSLTrainer("cpu", 1, data, method, optimizer, clip_grad_mode="per_layer")


def coda_batches(n: int) -> list[dict]:
    torch.manual_seed(0)
    return [
        {
            "global_0": torch.rand(4, 1, 64, 64),
            "global_1": torch.rand(4, 1, 64, 64),
            "full": torch.rand(4, 1, 64, 64),
            "local_0": torch.rand(4, 1, 32, 32),
            "region_label": torch.tensor([0, 0, 1, 1]),
        }
        for _ in range(n)
    ]


def snapshot(heads: dict[str, DINOHead]) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.detach().clone() for k, v in h.named_parameters()} for name, h in heads.items()}


@pytest.mark.parametrize("freeze_epochs", [1, 0])
def test_freeze_last_layer_drops_exactly_the_last_layer_update_in_epoch_one(freeze_epochs):
    """Coda's two DINO heads (h_org, h_ins) on the Ignite trainer, AdamW with weight decay, per-parameter
    clipping: during epoch 1 the last layers do not move at all (no gradient step, no decay, no optimiser
    state) while the MLPs do; in epoch 2 the last layers move."""
    torch.manual_seed(0)
    method = Coda(SwinEncoder(in_channels=1, feature_size=12, spatial_dims=2), 32, 16, 8)
    heads = {"org": method.org_head, "ins": method.ins_head}
    optimizer = torch.optim.AdamW(parameter_groups(method, 0.04), lr=1e-2)
    trainer = SSLTrainer(
        "cpu",
        2,
        coda_batches(2),
        method,
        optimizer,
        clip_grad_norm=3.0,
        clip_grad_mode="per_parameter",
        train_handlers=[FreezeLastLayerHandler(freeze_epochs)],
    )
    states, stateful = [snapshot(heads)], []
    last_layers = FreezeLastLayerHandler.last_layer_parameters(method)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: states.append(snapshot(heads)))
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda _: stateful.append(any(p in optimizer.state for p in last_layers))
    )
    trainer.run()
    assert stateful == [freeze_epochs == 0, True], "AdamW skips a parameter without a gradient entirely"
    v = "last_layer.parametrizations.weight.original1"
    for name in heads:
        start, epoch1, epoch2 = (s[name] for s in states)
        mlp_moved = [k for k in start if k.startswith("mlp.") and not torch.equal(start[k], epoch1[k])]
        assert len(mlp_moved) == len([k for k in start if k.startswith("mlp.")]), name
        assert torch.equal(start[v], epoch1[v]) == (freeze_epochs == 1), name
        assert not torch.equal(epoch1[v], epoch2[v]), f"{name}: the last layer must train after the freeze"
        g = "last_layer.parametrizations.weight.original0"  # norm_last_layer: never trained
        assert torch.equal(start[g], epoch2[g])
    with pytest.raises(ValueError, match="freeze_last_layer"):
        FreezeLastLayerHandler(-1)


def test_freeze_last_layer_finds_every_dino_head_and_only_their_last_layers():
    torch.manual_seed(0)
    method = Coda(SwinEncoder(in_channels=1, feature_size=12, spatial_dims=2), 32, 16, 8)
    found = {id(p) for p in FreezeLastLayerHandler.last_layer_parameters(method)}
    expected = {
        id(p)
        for head in (method.org_head, method.ins_head, method.teacher_org_head, method.teacher_ins_head)
        for p in head.last_layer.parameters()
    }
    assert found == expected and len(found) == 8
