"""Published checkpoints load through the project with the source model's outputs (max |delta| <= 1e-5).

Each test builds the source's original architecture from a well-kept package (MONAI, Hugging Face
``transformers``), initialises it randomly, writes its state dict in the published file layout, loads the file
by its published name (``build_encoder(name, weights=PATH)``) and compares outputs on one input.
"""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import SegResNet, SwinUNETR, resnet10
from monai.networks.nets.segresnet_ds import SegResEncoder

from common.networks import EncoderLoadError, GenesisUNet, build_encoder, build_encoder_segmenter

TOL = 1e-5


def max_delta(ours, reference) -> float:
    """The largest |difference| over paired tensors, asserted within :data:`TOL`."""
    ours, reference = list(ours), list(reference)
    assert len(ours) == len(reference)
    delta = max((a - b).abs().max().item() for a, b in zip(ours, reference, strict=True))
    print(f"max |delta| = {delta:.2e}")
    assert delta <= TOL
    return delta


def save(tmp_path, obj, name="weights.pt"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def save_safetensors(tmp_path, state):
    """``state`` as a Hugging Face Hub ``model.safetensors`` file."""
    safetensors = pytest.importorskip("safetensors.torch", reason="the published extra installs safetensors")
    path = tmp_path / "model.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


@pytest.mark.parametrize(
    ("name", "use_v2", "prefix"),
    [("swinunetr_ssl", False, "module."), ("swinunetr_v2_ssl", True, "module.backbone.swinViT.")],
)
def test_monai_swinunetr_ssl(tmp_path, name, use_v2, prefix):
    torch.manual_seed(0)
    net = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, use_v2=use_v2).eval()
    state = {prefix + k: v for k, v in net.swinViT.state_dict().items()}
    state |= {"module.rotation_head.weight": torch.randn(4, 192), "module.conv.0.weight": torch.randn(1)}
    encoder = build_encoder(name, weights=save(tmp_path, {"state_dict": state}), feature_size=12).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        max_delta(encoder.features(x), net.swinViT(x, net.normalize))


def test_suprem_swinunetr(tmp_path):
    torch.manual_seed(0)
    net = SwinUNETR(in_channels=1, out_channels=3, feature_size=12).eval()
    state = {"module.backbone." + k: v for k, v in net.state_dict().items()}
    state |= {"module.organ_embedding": torch.randn(3, 512), "module.controller.weight": torch.randn(8, 256)}
    encoder = build_encoder("suprem_swinunetr", save(tmp_path, {"net": state}), feature_size=12).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        max_delta(encoder.features(x), net.swinViT(x, net.normalize))


def test_suprem_segresnet(tmp_path):
    torch.manual_seed(0)
    net = SegResNet(spatial_dims=3, init_filters=8, in_channels=1, out_channels=3, blocks_down=(1, 2, 2, 4))
    state = {"module." + k: v for k, v in net.eval().state_dict().items()}
    encoder = build_encoder("suprem_segresnet", weights=save(tmp_path, {"net": state}), init_filters=8).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        max_delta(encoder.features(x), net.encode(x)[1])


def test_suprem_unet(tmp_path):
    torch.manual_seed(0)
    net = GenesisUNet(out_channels=3)
    state = {"module.backbone." + k: v for k, v in net.state_dict().items()}
    state["module.precls_conv.0.weight"] = torch.randn(8)
    encoder = build_encoder("suprem_unet", weights=save(tmp_path, {"net": state}))
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        max_delta(encoder.features(x), net.features(x))
    loaded = {k: v for k, v in encoder.state_dict().items() if "running" not in k and "batches" not in k}
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in loaded.items())


def genesis_layer_table() -> dict[str, tuple[int, ...]]:
    """Convolution weight shapes of Models Genesis' ``UNet3D`` (``pytorch/unet3d.py``, n_class 1), written
    out from its channel arithmetic: level d of the down path 32 * 2**d then twice that; up levels concatenate
    the skip and halve."""
    table = {}
    for name, cin, mid, out in (
        ("down_tr64", 1, 32, 64),
        ("down_tr128", 64, 64, 128),
        ("down_tr256", 128, 128, 256),
        ("down_tr512", 256, 256, 512),
        ("up_tr256", 768, 256, 256),
        ("up_tr128", 384, 128, 128),
        ("up_tr64", 192, 64, 64),
    ):
        table[f"{name}.ops.0.conv1.weight"] = (mid, cin, 3, 3, 3)
        table[f"{name}.ops.1.conv1.weight"] = (out, mid, 3, 3, 3)
    for name, width in (("up_tr256", 512), ("up_tr128", 256), ("up_tr64", 128)):
        table[f"{name}.up_conv.weight"] = (width, width, 2, 2, 2)
    table["out_tr.final_conv.weight"] = (1, 64, 1, 1, 1)
    return table


def test_genesis_unet_matches_published_layer_table():
    net = GenesisUNet(out_channels=1)
    convs = {k: tuple(v.shape) for k, v in net.state_dict().items() if k.endswith("weight") and v.dim() == 5}
    assert convs == genesis_layer_table()
    # every convolution has a bias, every ConvUnit a BatchNorm (weight and bias): 19,073,665 parameters
    conv_params = sum(torch.Size(s).numel() + s[0] for s in genesis_layer_table().values())
    norm_params = 2 * sum(s[0] for k, s in genesis_layer_table().items() if ".ops." in k)
    assert sum(p.numel() for p in net.parameters()) == conv_params + norm_params == 19_073_665


def test_genesis_unet_normalises_with_batch_statistics_in_eval():
    net = GenesisUNet().eval()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        # running statistics are never used: the output of a sample depends on the rest of its batch
        assert not torch.allclose(net(x)[:1], net(x[:1]))


def test_ct_fm_segresencoder(tmp_path):
    torch.manual_seed(0)
    reference = SegResEncoder(
        spatial_dims=3, init_filters=8, in_channels=1, blocks_down=(1, 2, 2, 4, 4)
    ).eval()
    path = save_safetensors(tmp_path, reference.state_dict())
    encoder = build_encoder("ct_fm", weights=path, init_filters=8).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        max_delta(encoder.features(x), reference(x))


def test_medicalnet_resnet10(tmp_path):
    torch.manual_seed(0)
    reference = resnet10(
        spatial_dims=3,
        n_input_channels=1,
        conv1_t_stride=2,
        shortcut_type="B",
        bias_downsample=False,
        feed_forward=False,
    )
    for module in reference.modules():  # random BatchNorm statistics so that eval mode uses them
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    state = {"module." + k: v for k, v in reference.eval().state_dict().items()}
    state |= {"module.conv_seg.0.weight": torch.randn(32, 512, 3, 3, 3)}
    encoder = build_encoder("medicalnet_resnet10", weights=save(tmp_path, {"state_dict": state})).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        max_delta([encoder(x)], [reference(x)])


def test_downstream_bundles_take_a_published_name_and_file(tmp_path):
    """The segmentation bundles' network: ``encoder_name`` a published name, ``pretrained_encoder``
    its file."""
    torch.manual_seed(0)
    net = SegResNet(spatial_dims=3, init_filters=8, in_channels=1, out_channels=3).eval()
    path = save(tmp_path, {"net": {"module." + k: v for k, v in net.state_dict().items()}})
    segmenter = build_encoder_segmenter("suprem_segresnet", {"init_filters": 8}, 4, (32, 32, 32), path).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert segmenter(x).shape == (1, 4, 32, 32, 32)
        max_delta(segmenter.encoder.features(x), net.encode(x)[1])


def test_published_mapping_is_strict(tmp_path):
    torch.manual_seed(0)
    segresnet = SegResNet(spatial_dims=3, init_filters=8, in_channels=1, out_channels=3)
    path = save(tmp_path, {"net": {"module." + k: v for k, v in segresnet.state_dict().items()}}, "seg.pt")
    with pytest.raises(EncoderLoadError, match=r"seg\.pt.*suprem_swinunetr(.|\n)*missing keys"):
        build_encoder("suprem_swinunetr", weights=path, feature_size=12)
    with pytest.raises(EncoderLoadError, match=r"shape mismatch keys: convInit"):
        build_encoder("suprem_segresnet", weights=path)  # init_filters 16 expected, file has 8
    state = {"module." + k: v for k, v in segresnet.state_dict().items()} | {
        "module.extra.weight": torch.ones(1)
    }
    with pytest.raises(EncoderLoadError, match=r"unexpected keys: module\.extra\.weight"):
        build_encoder("suprem_segresnet", weights=save(tmp_path, {"net": state}), init_filters=8)
    with pytest.raises(ValueError, match="published checkpoint"):
        build_encoder("no_such_checkpoint")


# --- DINOv2 family against Hugging Face transformers -------------------------------------------------------

HUB_NAMES = {
    "q_proj": "attention.query",
    "k_proj": "attention.key",
    "v_proj": "attention.value",
    "o_proj": "output.dense",
}


def hf_dinov2(registers: int, **config):
    """A random Hugging Face DINOv2 ViT-S/14 (518 px) with ``registers`` register tokens."""
    transformers = pytest.importorskip("transformers", reason="the published extra installs transformers")
    torch.manual_seed(0)
    kwargs = {
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "image_size": 518,
        "patch_size": 14,
        "layerscale_value": 0.5,
        **config,
    }
    if registers:
        model = transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **kwargs)
        )
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**kwargs))
    return model.eval()


def hf_outputs(model, x) -> list[torch.Tensor]:
    """(CLS, patch tokens) after the final norm, registers excluded."""
    hidden = model(pixel_values=x).last_hidden_state
    skip = 1 + getattr(model.config, "num_register_tokens", 0)
    return [hidden[:, 0], hidden[:, skip:]]


def hub_file_names(state: dict) -> dict:
    """``transformers`` 5 key names -> those of the files on the Hugging Face Hub
    (``attention.attention.query``, ``attention.output.dense``)."""
    renamed = {}
    for key, value in state.items():
        for new, old in HUB_NAMES.items():
            key = key.replace(f"attention.{new}.", f"attention.{old}.")
        renamed[key] = value
    return renamed


@pytest.mark.parametrize("hub_names", [False, True])
@pytest.mark.parametrize("registers", [0, 4])
def test_hf_dinov2_at_224_and_448(tmp_path, registers, hub_names):
    model = hf_dinov2(registers)
    state = model.state_dict()
    path = save(tmp_path, hub_file_names(state) if hub_names else state)
    name = "hf_dinov2_small_with_registers" if registers else "hf_dinov2_small"
    stored_grid = build_encoder(name, weights=path, img_size=518).eval()
    with torch.no_grad():
        for size in (224, 448):
            x = torch.randn(1, 3, size, size)
            resized_at_load = build_encoder(name, weights=path, img_size=size).eval()
            reference = hf_outputs(model, x)
            max_delta(stored_grid.tokens(x), reference)
            max_delta(resized_at_load.tokens(x), reference)


def official_layout(model) -> dict:
    """A Hugging Face DINOv2's weights written in the official layout (``torch.hub`` files), key by key."""
    official = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[0] == "encoder":
            block, rest = parts[2], ".".join(parts[3:])
            rest = rest.replace("layer_scale1.lambda1", "ls1.gamma").replace(
                "layer_scale2.lambda1", "ls2.gamma"
            )
            rest = rest.replace("attention.o_proj", "attn.proj")
            if rest.startswith(("attention.q_proj", "attention.k_proj", "attention.v_proj")):
                continue
            official[f"blocks.{block}.{rest}"] = value
        elif parts[0] == "layernorm":
            official[f"norm.{parts[1]}"] = value
        else:
            official[
                {
                    "embeddings.cls_token": "cls_token",
                    "embeddings.mask_token": "mask_token",
                    "embeddings.position_embeddings": "pos_embed",
                    "embeddings.register_tokens": "register_tokens",
                    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
                    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
                }[key]
            ] = value
    for i, layer in enumerate(model.encoder.layer):
        attn = layer.attention
        for kind in ("weight", "bias"):
            parts = [getattr(getattr(attn, p), kind) for p in ("q_proj", "k_proj", "v_proj")]
            official[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts).detach()
    return official


def test_official_dinov2_reg4_at_224_and_448_and_timm_layout(tmp_path):
    """The registers models resize position embeddings to the output size with antialiasing (offset 0), as
    the official code and transformers do: equal outputs at 224 and 448."""
    model = hf_dinov2(4)
    official = official_layout(model)
    official_path = save(tmp_path, official, "official.pt")
    timm = {
        ("reg_token" if k == "register_tokens" else k): v for k, v in official.items() if k != "mask_token"
    }
    timm_path = save(tmp_path, timm, "timm.pt")
    with torch.no_grad():
        for size in (224, 448):
            x = torch.randn(1, 3, size, size)
            ours = build_encoder("dinov2_vits14_reg4", weights=official_path, img_size=size).eval()
            from_timm = build_encoder("timm_vit_small_patch14_reg4_dinov2", weights=timm_path, img_size=size)
            max_delta(ours.tokens(x), hf_outputs(model, x))
            max_delta(from_timm.eval().tokens(x), ours.tokens(x))


def test_official_dinov2_at_stored_grid(tmp_path):
    """Without registers the official model scales by (grid + 0.1) / 37, transformers to the output size: they
    agree at the stored 518 px grid, where nothing is resized."""
    model = hf_dinov2(0)
    path = save(tmp_path, official_layout(model))
    ours = build_encoder("dinov2_vits14", weights=path, img_size=518).eval()
    x = torch.randn(1, 3, 518, 518)
    with torch.no_grad():
        max_delta(ours.tokens(x), hf_outputs(model, x))


def test_rad_dino(tmp_path):
    transformers = pytest.importorskip("transformers", reason="the published extra installs transformers")
    torch.manual_seed(0)
    config = transformers.Dinov2Config(image_size=518, patch_size=14, layerscale_value=0.5)  # ViT-B/14
    model = transformers.Dinov2Model(config).eval()
    path = save_safetensors(tmp_path, hub_file_names(model.state_dict()))
    ours = build_encoder("rad_dino", weights=path).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        max_delta(ours.tokens(x), hf_outputs(model, x))


@pytest.mark.parametrize(
    ("name", "config", "shape"),
    [
        ("suprem_unet", {}, (2, 1, 16, 16, 16)),
        ("ct_fm", {"init_filters": 8}, (1, 1, 32, 32, 32)),
        ("medicalnet_resnet10", {}, (1, 1, 32, 32, 32)),
    ],
)
def test_new_encoders_script(name, config, shape):
    """The encoders added for published checkpoints export by scripting (the model zoo's ``ckpt_export``)."""
    torch.manual_seed(0)
    encoder = build_encoder(name, **config).eval()
    scripted = torch.jit.script(encoder)
    x = torch.randn(*shape)
    with torch.no_grad():
        max_delta([scripted(x)], [encoder(x)])
