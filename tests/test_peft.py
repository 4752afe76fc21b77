"""LoRA (Hu et al. 2021), BitFit (Ben Zaken et al. 2022) and the fine-tuning protocols of
DINOv2-radiology (papers/004, Table 9): common/networks/peft.py."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import ViT as MonaiViT
from torch import nn

from common.networks.peft import (
    LoRALinear,
    apply_bitfit,
    apply_lora,
    apply_peft,
    merge_lora,
    trainable_share,
)

DIM, HEADS, TOKENS, CLASSES, DEPTH = 16, 2, 5, 3, 2


class Attention(nn.Module):
    """Multi-head self-attention with the DINOv2 layout (``qkv``, ``proj``)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) / (DIM // HEADS) ** 0.5).softmax(-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, DIM))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(DIM), Attention(), nn.LayerNorm(DIM)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(DIM, 2 * DIM))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(2 * DIM, DIM))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[Block() for _ in range(DEPTH)])
        self.norm = nn.LayerNorm(DIM)

    def forward(self, x):
        return self.norm(self.blocks(x)).mean(1)


class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.head = TinyEncoder(), nn.Linear(DIM, CLASSES)

    def forward(self, x):
        return self.head(self.encoder(x))


# parameter counts written out from the architecture
LAYERNORM = 2 * DIM
BLOCK = LAYERNORM + (DIM * 3 * DIM + 3 * DIM) + (DIM * DIM + DIM) + LAYERNORM
BLOCK += (DIM * 2 * DIM + 2 * DIM) + (2 * DIM * DIM + DIM)
HEAD = DIM * CLASSES + CLASSES
TOTAL = DEPTH * BLOCK + LAYERNORM + HEAD
BIASES = DEPTH * (DIM + 3 * DIM + DIM + DIM + 2 * DIM + DIM) + DIM + CLASSES  # norms, qkv, proj, fc1, fc2


def tiny_model(seed: int = 0) -> TinyClassifier:
    torch.manual_seed(seed)
    return TinyClassifier()


def tokens(seed: int = 1, batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, TOKENS, DIM, generator=torch.Generator().manual_seed(seed))


def train_steps(model: nn.Module, steps: int = 3, lr: float = 0.05) -> None:
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    target = torch.tensor([0, 1, 2, 1])
    for step in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(tokens(seed=10 + step)), target).backward()
        optimiser.step()


def test_lora_linear_follows_the_equation():
    base = nn.Linear(6, 4)
    lora = LoRALinear(base, rank=2, alpha=3.0)
    with torch.no_grad():
        lora.lora_b.normal_()
    x = torch.randn(5, 6)
    a, b = lora.lora_a.detach(), lora.lora_b.detach()
    expected = x @ base.weight.T + base.bias + (3.0 / 2) * (x @ a.T @ b.T)  # h = W0 x + alpha/r B A x
    assert lora.scaling == 1.5
    assert torch.allclose(lora(x), expected, atol=1e-6)
    assert not base.weight.requires_grad and lora.lora_a.requires_grad and lora.lora_b.requires_grad
    assert torch.count_nonzero(LoRALinear(nn.Linear(6, 4)).lora_b) == 0  # B starts at zero
    assert lora.lora_a.std() > 0  # A is random


def test_lora_at_initialisation_is_bit_identical():
    model, x = tiny_model(), tokens()
    before = model(x)
    wrapped = apply_lora(model, rank=4, alpha=8, target_modules=("qkv", "attn.proj", "fc1"))
    assert wrapped == [
        f"encoder.blocks.{i}.{n}" for i in range(DEPTH) for n in ("attn.qkv", "attn.proj", "mlp.fc1")
    ]
    assert torch.equal(model(x), before)


def test_lora_on_monai_vit_is_bit_identical_and_matches_its_names():
    torch.manual_seed(0)
    vit = MonaiViT(1, (32, 32), (8, 8), hidden_size=32, mlp_dim=64, num_layers=2, num_heads=4, spatial_dims=2)
    vit.eval()
    x = torch.randn(2, 1, 32, 32)
    before = vit(x)[0]
    wrapped = apply_lora(vit, rank=2, target_modules=("qkv", "out_proj"))
    assert wrapped == [f"blocks.{i}.attn.{n}" for i in range(2) for n in ("out_proj", "qkv")]
    assert torch.equal(vit(x)[0], before)


def test_lora_trains_only_adapters_and_merges_to_the_same_function():
    model, x = tiny_model(), tokens()
    original_keys = list(model.state_dict())
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, rank=4, alpha=8, target_modules=("qkv", "proj"))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"encoder.blocks.{i}.attn.{m}.lora_{ab}" for i in range(DEPTH) for m in ("qkv", "proj") for ab in "ab"
    }
    train_steps(model)
    qkv = model.encoder.blocks[0].attn.qkv
    assert torch.count_nonzero(qkv.lora_b) > 0  # the adapter moved
    for name, value in model.state_dict().items():  # every pre-trained tensor is untouched
        if "lora_" not in name:
            assert torch.equal(value, frozen[name.replace(".base.", ".")]), name
    expected_qkv = qkv.base.weight + 2.0 * qkv.lora_b @ qkv.lora_a  # W0 + alpha / r * B A
    adapted = model(x)
    assert merge_lora(model) == [
        f"encoder.blocks.{i}.attn.{m}" for i in range(DEPTH) for m in ("qkv", "proj")
    ]
    assert list(model.state_dict()) == original_keys
    assert type(model.encoder.blocks[0].attn.qkv) is nn.Linear
    assert torch.allclose(model.encoder.blocks[0].attn.qkv.weight, expected_qkv, atol=1e-6)
    assert torch.allclose(model(x), adapted, atol=1e-5)


def test_bitfit_trains_only_biases_and_the_head():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.named_parameters()}
    names = apply_bitfit(model, keep_trainable=("head.",))
    assert set(names) == {n for n in before if n.endswith(".bias")} | {"head.weight"}
    train_steps(model, steps=1)
    for name, value in model.named_parameters():
        if name.endswith(".bias") or name.startswith("head."):
            assert not torch.equal(value, before[name]), f"{name} did not train"
        else:
            assert torch.equal(value, before[name]), f"{name} changed"
    assert trainable_share(model) == {
        "trainable": BIASES + DIM * CLASSES,
        "total": TOTAL,
        "share": (BIASES + DIM * CLASSES) / TOTAL,
    }


def test_trainable_share_of_each_protocol_by_hand():
    rank = 4
    lora_qkv = rank * DIM + 3 * DIM * rank  # A (r x in) + B (out x r)
    expected = {
        "full": TOTAL,
        "linear": HEAD,
        "lora": DEPTH * lora_qkv + HEAD,
        "bitfit": BIASES + DIM * CLASSES,
    }
    for method, trainable in expected.items():
        options = {"rank": rank, "alpha": 8.0} if method == "lora" else {}
        model = apply_peft(tiny_model(), method, head_prefix="head.", **options)
        total = TOTAL + (DEPTH * lora_qkv if method == "lora" else 0)
        assert trainable_share(model) == {"trainable": trainable, "total": total, "share": trainable / total}
    model = apply_peft(tiny_model(), "linear")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]


def test_errors_are_clear():
    with pytest.raises(ValueError, match=r"encoder\.blocks\.0\.attn\.qkv"):
        apply_lora(tiny_model(), target_modules=("to_q",))
    model = tiny_model()
    apply_lora(model)
    with pytest.raises(ValueError, match="no nn.Linear named like"):  # qkv is already wrapped
        apply_lora(model)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        LoRALinear(nn.Linear(2, 2), rank=0)
    with pytest.raises(TypeError, match="wraps an nn.Linear"):
        LoRALinear(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="no bias"):
        apply_bitfit(nn.Linear(3, 2, bias=False))
    with pytest.raises(ValueError, match="unknown fine-tuning method 'prompt'"):
        apply_peft(tiny_model(), "prompt")
    with pytest.raises(ValueError, match="LoRA options"):
        apply_peft(tiny_model(), "bitfit", rank=4)
    with pytest.raises(ValueError, match=r"head_prefix 'classifier\.'.*\['encoder', 'head'\]"):
        apply_peft(tiny_model(), "linear", head_prefix="classifier.")
    with pytest.raises(ValueError, match="no parameters"):
        trainable_share(nn.ReLU())
