"""The DINOv2-compatible ViT against a reference written out from the ViT/DINOv2 equations, its position
embedding resize against a hand-written bicubic, and the loading of state dicts built to the official
DINOv2 layout (facebookresearch/dinov2, ``dinov2_vits14[_reg4]_pretrain.pth``)."""

import math

import pytest
import torch

from common.networks.dinov2 import dinov2_vit, load_dinov2_weights
from common.networks.pretrained import EncoderLoadError
from common.networks.vit import VIT_VARIANTS, ViT, default_feature_blocks, interpolate_pos_embed

TINY = {"embed_dim": 24, "depth": 4, "num_heads": 3, "patch_size": 7, "img_size": 28}


def official_layout(
    embed_dim, depth, mlp_hidden, img_size=518, patch=14, registers=0, swiglu=False, channels=3
):
    """Key -> shape of an official DINOv2 backbone checkpoint (``DinoVisionTransformer``, block_chunks=0),
    from the architecture numbers alone."""
    d, n = embed_dim, (img_size // patch) ** 2
    shapes = {"cls_token": (1, 1, d), "pos_embed": (1, 1 + n, d), "mask_token": (1, d)}
    if registers:
        shapes["register_tokens"] = (1, registers, d)
    shapes |= {"patch_embed.proj.weight": (d, channels, patch, patch), "patch_embed.proj.bias": (d,)}
    if swiglu:
        hidden = (int(mlp_hidden * 2 / 3) + 7) // 8 * 8
        ffn = {"mlp.w12.weight": (2 * hidden, d), "mlp.w12.bias": (2 * hidden,)}
        ffn |= {"mlp.w3.weight": (d, hidden), "mlp.w3.bias": (d,)}
    else:
        ffn = {"mlp.fc1.weight": (mlp_hidden, d), "mlp.fc1.bias": (mlp_hidden,)}
        ffn |= {"mlp.fc2.weight": (d, mlp_hidden), "mlp.fc2.bias": (d,)}
    block = {
        "norm1.weight": (d,),
        "norm1.bias": (d,),
        "attn.qkv.weight": (3 * d, d),
        "attn.qkv.bias": (3 * d,),
    }
    block |= {"attn.proj.weight": (d, d), "attn.proj.bias": (d,), "ls1.gamma": (d,)}
    block |= {"norm2.weight": (d,), "norm2.bias": (d,), **ffn, "ls2.gamma": (d,)}
    for i in range(depth):
        shapes |= {f"blocks.{i}.{k}": v for k, v in block.items()}
    return shapes | {"norm.weight": (d,), "norm.bias": (d,)}


def random_state(shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=generator) * 0.3 for k, s in shapes.items()}


def vits14_state(registers=0, seed=0):
    """An official-layout ViT-S/14 file at 518 px: width 384, 12 blocks, MLP 1536."""
    return random_state(official_layout(384, 12, 1536, registers=registers), seed)


def layer_norm(x, weight, bias, eps=1e-6):
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + eps) * weight + bias


def reference_tokens(state, x, num_heads, patch, registers=0, swiglu=False):
    """The DINOv2 forward written out: patches as a matrix product, [CLS] + position embeddings, registers,
    pre-norm blocks with per-head softmax attention and LayerScale, final norm. Returns (CLS, patches,
    per-block normed patch tokens)."""
    b, c, height, width = x.shape
    h, w = height // patch, width // patch
    d = state["cls_token"].shape[-1]
    patches = x.reshape(b, c, h, patch, w, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, -1)
    tokens = patches @ state["patch_embed.proj.weight"].reshape(d, -1).T + state["patch_embed.proj.bias"]
    tokens = torch.cat([state["cls_token"].expand(b, -1, -1), tokens], 1) + state["pos_embed"]
    if registers:
        tokens = torch.cat([tokens[:, :1], state["register_tokens"].expand(b, -1, -1), tokens[:, 1:]], 1)
    hd, per_block, i = d // num_heads, [], 0
    while f"blocks.{i}.norm1.weight" in state:
        s = {k[len(f"blocks.{i}.") :]: v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        y = layer_norm(tokens, s["norm1.weight"], s["norm1.bias"])
        qkv = y @ s["attn.qkv.weight"].T + s["attn.qkv.bias"]
        heads = []
        for head in range(num_heads):
            q, k, v = (qkv[..., part * d + head * hd : part * d + (head + 1) * hd] for part in range(3))
            heads.append(torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd), dim=-1) @ v)
        attn = torch.cat(heads, -1) @ s["attn.proj.weight"].T + s["attn.proj.bias"]
        tokens = tokens + s["ls1.gamma"] * attn
        y = layer_norm(tokens, s["norm2.weight"], s["norm2.bias"])
        if swiglu:
            a, gate = (y @ s["mlp.w12.weight"].T + s["mlp.w12.bias"]).chunk(2, -1)
            ffn = (a * torch.sigmoid(a) * gate) @ s["mlp.w3.weight"].T + s["mlp.w3.bias"]
        else:
            hidden = y @ s["mlp.fc1.weight"].T + s["mlp.fc1.bias"]
            ffn = (
                0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2))) @ s["mlp.fc2.weight"].T
                + s["mlp.fc2.bias"]
            )
        tokens = tokens + s["ls2.gamma"] * ffn
        per_block.append(layer_norm(tokens, state["norm.weight"], state["norm.bias"])[:, 1 + registers :])
        i += 1
    out = layer_norm(tokens, state["norm.weight"], state["norm.bias"])
    return out[:, 0], out[:, 1 + registers :], per_block


@pytest.mark.parametrize("registers,ffn", [(0, "mlp"), (2, "mlp"), (0, "swiglu")])
def test_vit_matches_reference(registers, ffn):
    torch.manual_seed(0)
    vit = ViT(in_channels=2, num_register_tokens=registers, ffn=ffn, layer_scale_init=0.5, **TINY).double()
    with torch.no_grad():
        for p in vit.parameters():
            p.normal_(0, 0.3)
    state = vit.state_dict()
    x = torch.randn(2, 2, 28, 28, dtype=torch.float64)
    cls, patches, per_block = reference_tokens(state, x, 3, 7, registers, ffn == "swiglu")
    got_cls, got_patches = vit.tokens(x)
    torch.testing.assert_close(got_cls, cls, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got_patches, patches, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(vit(x), cls, rtol=1e-9, atol=1e-9)
    maps = vit.features(x)
    assert vit.feature_blocks == (0, 1, 2, 3) and len(maps) == 4
    for got, want in zip(maps, per_block, strict=True):
        assert got.shape == (2, 24, 4, 4)
        torch.testing.assert_close(got, want.transpose(1, 2).reshape(2, 24, 4, 4), rtol=1e-9, atol=1e-9)


def test_interface_and_other_input_sizes():
    vit = ViT(in_channels=1, num_register_tokens=4, **TINY).eval()
    x = torch.randn(3, 1, 21, 42)
    assert (vit.spatial_dims, vit.out_dim) == (2, 24)
    assert vit.feature_channels == (24,) * 4 and vit.feature_strides == (7,) * 4
    cls, patches = vit.tokens(x)
    assert cls.shape == (3, 24) and patches.shape == (3, 3 * 6, 24)
    assert [tuple(m.shape) for m in vit.features(x)] == [(3, 24, 3, 6)] * 4
    assert isinstance(vit.blocks[0].attn.qkv, torch.nn.Linear) and isinstance(
        vit.blocks[0].attn.proj, torch.nn.Linear
    )
    assert not any(".ls" in k for k in ViT(layer_scale_init=None, **TINY).state_dict())


def test_default_feature_blocks_are_quarter_ends():
    assert default_feature_blocks(12) == (2, 5, 8, 11)
    assert default_feature_blocks(24) == (5, 11, 17, 23)
    assert default_feature_blocks(40) == (9, 19, 29, 39)
    assert ViT(**TINY, feature_blocks=(0, 1, 2, 2 + 1)).feature_blocks == (0, 1, 2, 3)


def test_mask_token_replaces_masked_patches():
    vit = ViT(**TINY)
    x = torch.randn(1, 3, 28, 28)
    masks = torch.zeros(1, 16, dtype=torch.bool)
    masks[0, 5] = True
    tokens = vit.embed(x, masks)
    torch.testing.assert_close(tokens[0, 1 + 5], vit.mask_token[0] + vit.pos_embed[0, 1 + 5])
    torch.testing.assert_close(tokens[0, 1 + 4], vit.embed(x)[0, 1 + 4])


def bicubic_reference(grid, out_h, out_w, scale_h, scale_w, a=-0.75):
    """Separable cubic convolution (Keys, a = -0.75), half-pixel centres, border taps clamped:
    out[i] = sum_k W(t + 1 - k) in[clamp(floor(s) - 1 + k)], s = (i + 0.5) / scale - 0.5, t = s - floor(s)."""

    def weight(d):
        d = abs(d)
        if d <= 1:
            return ((a + 2) * d - (a + 3)) * d * d + 1
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a if d < 2 else 0.0

    def resize_axis0(values, size, scale):
        rows = []
        for i in range(size):
            src = (i + 0.5) / scale - 0.5
            base = math.floor(src)
            t = src - base
            row = sum(
                weight(t + 1 - k) * values[min(max(base - 1 + k, 0), len(values) - 1)] for k in range(4)
            )
            rows.append(row)
        return torch.stack(rows)

    resized = resize_axis0(grid, out_h, scale_h)  # (out_h, M, D)
    return resize_axis0(resized.transpose(0, 1), out_w, scale_w).transpose(0, 1)


@pytest.mark.parametrize("new_grid", [(3, 4), (7, 6)])
def test_interpolate_pos_embed_against_bicubic_reference(new_grid):
    side, dim = 5, 3
    pos = torch.randn(1, 1 + side * side, dim, dtype=torch.float64)
    out = interpolate_pos_embed(pos, new_grid)
    h, w = new_grid
    assert out.shape == (1, 1 + h * w, dim)
    assert torch.equal(out[:, 0], pos[:, 0])
    want = bicubic_reference(pos[0, 1:].reshape(side, side, dim), h, w, (h + 0.1) / side, (w + 0.1) / side)
    torch.testing.assert_close(out[0, 1:].reshape(h, w, dim), want, rtol=1e-12, atol=1e-12)
    constant = torch.full_like(pos, 2.5)
    torch.testing.assert_close(interpolate_pos_embed(constant, new_grid), torch.full_like(out, 2.5))


def test_interpolate_pos_embed_is_identity_at_stored_grid_and_checks_shape():
    pos = torch.randn(1, 1370, 384)
    assert interpolate_pos_embed(pos, (37, 37)) is pos
    assert interpolate_pos_embed(pos, (16, 16)).shape == (1, 257, 384)
    with pytest.raises(ValueError, match="not a square grid"):
        interpolate_pos_embed(torch.zeros(1, 1 + 12, 4), (3, 4))


@pytest.mark.parametrize("registers", [0, 4])
def test_official_vits14_layout_loads(registers):
    state = vits14_state(registers)
    assert sum(v.numel() for v in state.values()) == 22_056_576 + registers * 384  # dinov2_vits14: 22.06M
    at_518 = dinov2_vit("small", registers=registers, img_size=518, weights=state)
    assert set(at_518.state_dict()) == set(state)
    for key, value in at_518.state_dict().items():
        assert torch.equal(value, state[key]), key
    at_224 = dinov2_vit("small", registers=registers, weights=state)
    assert at_224.state_dict()["pos_embed"].shape == (1, 1 + 16 * 16, 384)
    for key, value in at_224.state_dict().items():
        resize = (at_224.interpolate_offset, at_224.interpolate_antialias)  # registers: (0, True)
        want = interpolate_pos_embed(state[key], (16, 16), *resize) if key == "pos_embed" else state[key]
        assert torch.equal(value, want), key
    # the 224-px ViT equals the 518-px ViT run on 224 px (which resizes its embeddings on the fly)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(at_224.eval()(x), at_518.eval()(x))


def test_chunked_prefixed_training_checkpoint(tmp_path):
    layout = official_layout(24, 4, 96, img_size=28, patch=7, registers=4)
    teacher, student = random_state(layout, seed=1), random_state(layout, seed=2)
    chunk = 2  # DINOv2 block_chunks=2: blocks.{chunk}.{i}, i the global block index

    def chunked(key):
        parts = key.split(".")
        return ".".join(["blocks", str(int(parts[1]) // chunk), *parts[1:]]) if parts[0] == "blocks" else key

    model = {f"teacher.backbone.{chunked(k)}": v for k, v in teacher.items() if k != "mask_token"}
    model |= {f"student.backbone.{chunked(k)}": v for k, v in student.items()}
    model |= {"teacher.dino_head.last_layer.weight": torch.zeros(8, 24)}
    path = tmp_path / "model_0001.pth"
    torch.save({"model": model}, path)
    vit = ViT(num_register_tokens=4, **TINY)
    mask_token = vit.mask_token.detach().clone()
    load_dinov2_weights(vit, path)
    for key, value in vit.state_dict().items():
        assert torch.equal(value, mask_token if key == "mask_token" else teacher[key]), key
    module_prefixed = {f"module.{k}": v for k, v in student.items()}
    load_dinov2_weights(vit, module_prefixed)
    assert torch.equal(vit.blocks[3].mlp.fc2.weight, student["blocks.3.mlp.fc2.weight"])


def test_mismatch_names_file_and_keys(tmp_path):
    wider = random_state(official_layout(48, 6, 192, img_size=28, patch=7))
    path = tmp_path / "dinov2_vitb14_pretrain.pth"
    torch.save(wider, path)
    with pytest.raises(EncoderLoadError) as info:
        load_dinov2_weights(ViT(**TINY), path)
    message = str(info.value)
    assert str(path) in message
    assert "blocks.0.attn.qkv.weight: file (144, 48) vs network (72, 24)" in message
    assert "unexpected keys: blocks.4." in message
    registers = random_state(official_layout(24, 4, 96, img_size=28, patch=7, registers=4))
    with pytest.raises(EncoderLoadError, match="unexpected keys: register_tokens"):
        load_dinov2_weights(ViT(**TINY), registers)
    with pytest.raises(EncoderLoadError, match="no DINOv2 backbone"):
        load_dinov2_weights(ViT(**TINY), {"head.weight": torch.zeros(2, 2)})


def test_one_channel_vit_sums_rgb_filters():
    state = random_state(official_layout(24, 4, 96, img_size=28, patch=7))
    grey = load_dinov2_weights(ViT(in_channels=1, **TINY), state).eval()
    rgb = load_dinov2_weights(ViT(in_channels=3, **TINY), state).eval()
    assert torch.equal(grey.patch_embed.proj.weight, state["patch_embed.proj.weight"].sum(1, keepdim=True))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.repeat(1, 3, 1, 1)), rtol=1e-5, atol=1e-5)


def test_variants_match_official_layouts():
    for name, mlp_hidden, swiglu in (("base", 3072, False), ("large", 4096, False), ("giant", 6144, True)):
        v = VIT_VARIANTS[name]
        with torch.device("meta"):
            vit = dinov2_vit(name, img_size=518)
        want = official_layout(v["embed_dim"], v["depth"], mlp_hidden, swiglu=swiglu)
        assert {k: tuple(t.shape) for k, t in vit.state_dict().items()} == want, name
    assert want["blocks.0.mlp.w12.weight"] == (8192, 1536)  # ViT-g/14's SwiGLU hidden width 4096
    with pytest.raises(ValueError, match="unknown DINOv2 variant"):
        dinov2_vit("huge")


def test_weights_file_and_bad_inputs(tmp_path):
    state = random_state(official_layout(24, 4, 96, img_size=28, patch=7))
    path = tmp_path / "w.pth"
    torch.save(state, path)
    vit = load_dinov2_weights(ViT(**TINY), path)
    assert torch.equal(vit.norm.weight, state["norm.weight"])
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_dinov2_weights(vit, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="multiples of the patch size 7"):
        vit(torch.zeros(1, 3, 28, 30))
    with pytest.raises(ValueError, match=r"expects input \(B, 3, H, W\)"):
        vit(torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match="feature_blocks"):
        ViT(**TINY, feature_blocks=(0, 1, 1, 2))
    with pytest.raises(ValueError, match="depth >= 4"):
        ViT(**{**TINY, "depth": 2})
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        ViT(**{**TINY, "img_size": 30})


def test_torchscript_export_matches_eager():
    vit = ViT(num_register_tokens=2, **TINY).eval()
    x = torch.randn(1, 3, 28, 35)
    assert torch.equal(torch.jit.script(vit)(x), vit(x))
    assert torch.equal(torch.jit.trace(vit, x)(x), vit(x))
