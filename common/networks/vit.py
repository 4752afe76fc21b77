"""A 2D Vision Transformer whose weights follow the official DINOv2 layout.

The architecture is ViT (Dosovitskiy et al., ICLR 2021) as DINOv2 builds it (Oquab et al., 2023, the
encoder evaluated by DINOv2-radiology, papers/004 Sec. 3; registers: Darcet et al., ICLR 2024):

- patch embedding: a ``patch_size`` convolution with stride ``patch_size`` (``patch_embed.proj``);
- tokens ``[CLS, registers..., patches...]``; learned position embeddings ``pos_embed`` (1, 1 + N, D) are
  added to [CLS] and the patches (registers have none), interpolated when the patch grid differs from the
  stored one (:func:`interpolate_pos_embed`);
- ``depth`` pre-norm blocks ``x = x + ls1(attn(norm1(x)))``, ``x = x + ls2(mlp(norm2(x)))`` with multi-head
  self-attention (one ``qkv`` linear layer with bias, then ``proj``), LayerScale ``ls*`` (Touvron et al.,
  ICCV 2021; a per-channel ``gamma``) and an MLP (``fc1``, GELU, ``fc2``) or a SwiGLU feed-forward
  (``w12`` then ``w3``: ``w3(SiLU(a) * b)`` with ``[a, b] = w12(x)``, hidden width
  ``(int(2/3 * mlp_ratio * D) + 7) // 8 * 8`` as DINOv2's ``SwiGLUFFNFused``); LayerNorms with eps 1e-6;
- a final LayerNorm ``norm``; ``mask_token`` (1, D) replaces masked patch embeddings (iBOT-style
  masked-image modelling, ``embed(x, masks)``).

State-dict keys are those of ``facebookresearch/dinov2``'s ``DinoVisionTransformer`` with
``block_chunks=0`` (``blocks.{i}.attn.qkv.weight`` ...), so official checkpoints load after key mapping
(``common.networks.dinov2``). ``qkv`` and ``proj`` are plain ``nn.Linear`` modules, which LoRA
(``common.networks.peft``) wraps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.layers import DropPath
from torch import nn
from torch.nn import functional as F

from .heads import trunc_normal_init_

# embed_dim, depth, num_heads (and ffn) of DINOv2's hub models vit_small, vit_base, vit_large, vit_giant2.
VIT_VARIANTS: dict[str, dict] = {
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "giant": {"embed_dim": 1536, "depth": 40, "num_heads": 24, "ffn": "swiglu"},
}
LAYER_NORM_EPS = 1e-6
# DINOv2's work-around when resizing position embeddings: the scale factor is (new + 0.1) / old (see
# facebookresearch/dino issue 8); kept so that resized embeddings equal the official model's.
INTERPOLATE_OFFSET = 0.1
NUM_FEATURE_MAPS = 4


def interpolate_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    offset: float = INTERPOLATE_OFFSET,
    antialias: bool = False,
) -> torch.Tensor:
    """Resize position embeddings ``(1, 1 + M*M, D)`` (CLS first, then a square M x M patch grid) to the
    patch grid ``new_grid = (h, w)``: ``(1, 1 + h*w, D)``.

    The CLS embedding is kept; the grid is resized bicubically (``align_corners=False``) with DINOv2's scale
    factors ``((h + offset) / M, (w + offset) / M)`` (``offset`` 0.1 as DINOv2), or to the output size
    ``(h, w)`` when ``offset`` is 0 (DINOv2's registers models, Hugging Face ``transformers``), with
    ``antialias`` (registers models). At the stored grid the input tensor itself is returned.
    """
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must be (1, 1 + N, D), got {list(pos_embed.shape)}")
    num_patches, dim = pos_embed.shape[1] - 1, pos_embed.shape[2]
    side = int(math.sqrt(num_patches) + 0.5)
    if side * side != num_patches:
        raise ValueError(f"pos_embed holds {num_patches} patch positions, not a square grid")
    h, w = int(new_grid[0]), int(new_grid[1])
    if h == side and w == side:
        return pos_embed
    compute_dtype = torch.promote_types(pos_embed.dtype, torch.float32)  # bicubic needs float32 or wider
    grid = pos_embed[:, 1:].to(compute_dtype).reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if offset != 0.0:
        scale = ((h + offset) / side, (w + offset) / side)
        grid = F.interpolate(
            grid, scale_factor=scale, mode="bicubic", align_corners=False, antialias=antialias
        )
    else:
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False, antialias=antialias)
    patches = grid.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(pos_embed.dtype)
    return torch.cat((pos_embed[:, :1], patches), dim=1)


def swiglu_hidden_features(hidden_features: int) -> int:
    """DINOv2's ``SwiGLUFFNFused`` width: 2/3 of the MLP width, rounded up to a multiple of 8."""
    return (int(hidden_features * 2 / 3) + 7) // 8 * 8


class PatchEmbed(nn.Module):
    """``(B, C, H, W)`` -> ``(B, D, H / p, W / p)`` by a ``p x p`` convolution of stride ``p``."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Attention(nn.Module):
    """Multi-head self-attention: ``proj(softmax(q k^T / sqrt(d)) v)`` with ``q, k, v`` from one linear
    layer ``qkv`` (with bias)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (
            self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        )
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """``w3(SiLU(a) * b)`` with ``[a, b] = w12(x)`` (Shazeer 2020), hidden width by
    :func:`swiglu_hidden_features`."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        hidden = swiglu_hidden_features(hidden)
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


FFN_LAYERS = {"mlp": Mlp, "swiglu": SwiGLUFFN}


class LayerScale(nn.Module):
    """``gamma * x`` with a learned per-channel ``gamma`` (Touvron et al., ICCV 2021, eq. 1)."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * x


class Block(nn.Module):
    """Pre-norm transformer block with optional LayerScale (``layer_scale_init`` None: none) and drop path."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        ffn: str,
        layer_scale_init: float | None,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = FFN_LAYERS[ffn](dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def default_feature_blocks(depth: int) -> tuple[int, ...]:
    """The last block of each quarter of the depth: ``(2, 5, 8, 11)`` for 12 blocks."""
    if depth < NUM_FEATURE_MAPS:
        raise ValueError(f"ViT needs depth >= {NUM_FEATURE_MAPS} for default feature_blocks, got {depth}")
    return tuple((q + 1) * depth // NUM_FEATURE_MAPS - 1 for q in range(NUM_FEATURE_MAPS))


class ViT(nn.Module):
    """DINOv2-compatible 2D ViT with the collection's encoder interface (``common.networks.encoders``).

    Args:
        in_channels: input channels.
        img_size: the (square) image size the position embeddings are stored for; other multiples of
            ``patch_size`` work by interpolating them.
        patch_size: patch side in pixels (DINOv2: 14).
        embed_dim, depth, num_heads: width, number of blocks, attention heads (:data:`VIT_VARIANTS`).
        mlp_ratio: feed-forward width over ``embed_dim``.
        num_register_tokens: register tokens (Darcet et al. 2024) inserted after [CLS]; 0 for none.
        layer_scale_init: initial LayerScale value; ``None`` builds blocks without LayerScale.
        ffn: ``"mlp"`` or ``"swiglu"``.
        feature_blocks: the four block indices whose outputs ``features`` returns (default
            :func:`default_feature_blocks`).
        drop_path_rate: stochastic depth, rising linearly from 0 over the blocks to this value.
        interpolate_offset, interpolate_antialias: how position embeddings are resized to other patch grids
            (:func:`interpolate_pos_embed`; DINOv2: 0.1 and False; its registers models: 0 and True).

    ``forward(x) -> (B, embed_dim)`` is the normed [CLS] token; ``tokens(x)`` gives (normed [CLS], normed
    patch tokens (B, N, D)), registers excluded; ``features(x)`` gives the normed patch tokens of the
    ``feature_blocks`` as maps ``(B, D, H / p, W / p)``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        img_size: int = 224,
        patch_size: int = 14,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 0,
        layer_scale_init: float | None = 1e-5,
        ffn: str = "mlp",
        feature_blocks: Sequence[int] | None = None,
        drop_path_rate: float = 0.0,
        interpolate_offset: float = INTERPOLATE_OFFSET,
        interpolate_antialias: bool = False,
    ) -> None:
        super().__init__()
        if ffn not in FFN_LAYERS:
            raise ValueError(f"ViT: unknown ffn {ffn!r}; choose one of {sorted(FFN_LAYERS)}")
        if img_size % patch_size:
            raise ValueError(f"ViT: img_size {img_size} is not a multiple of patch_size {patch_size}")
        if num_register_tokens < 0:
            raise ValueError(f"ViT: num_register_tokens must be >= 0, got {num_register_tokens}")
        blocks = tuple(feature_blocks) if feature_blocks is not None else default_feature_blocks(depth)
        increasing = len(blocks) == NUM_FEATURE_MAPS and list(blocks) == sorted(set(blocks))
        if not (increasing and 0 <= blocks[0] and blocks[-1] < depth):
            raise ValueError(
                f"ViT: feature_blocks must be 4 increasing indices in [0, {depth}), got {blocks}"
            )
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_offset, self.interpolate_antialias = float(interpolate_offset), interpolate_antialias
        self.feature_blocks = tuple(int(b) for b in blocks)
        self.spatial_dims = 2
        self.out_dim = embed_dim
        self.feature_channels = (embed_dim,) * NUM_FEATURE_MAPS
        self.feature_strides = (patch_size,) * NUM_FEATURE_MAPS

        self.patch_embed = PatchEmbed(in_channels, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        )
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, ffn, layer_scale_init, rate) for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self._init_weights()

    def _init_weights(self) -> None:
        """DINOv2's initialisation: truncated-normal (0.02) position embeddings and linear weights, zero
        biases, [CLS] and registers normal with std 1e-6."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        self.apply(trunc_normal_init_)

    def patch_grid(self, x: torch.Tensor) -> tuple[int, int]:
        """The patch grid ``(H / p, W / p)`` of an input ``(B, in_channels, H, W)``; ``ValueError`` for other
        shapes or sizes that are not multiples of ``patch_size``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ViT expects input (B, {self.in_channels}, H, W), got shape {list(x.shape)}")
        h, w = x.shape[2], x.shape[3]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"ViT needs H and W multiples of the patch size {self.patch_size}, got {(h, w)}")
        return h // self.patch_size, w // self.patch_size

    def embed(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """The token sequence entering the blocks, ``(B, 1 + R + N, D)``: [CLS] + its position embedding,
        the R registers, then the patch embeddings + theirs. ``masks`` (B, N) bool replaces the masked
        patch embeddings by ``mask_token`` (before position embeddings are added)."""
        grid = self.patch_grid(x)
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        if masks is not None:
            patches = torch.where(masks.unsqueeze(-1), self.mask_token.to(patches.dtype), patches)
        tokens = torch.cat((self.cls_token.expand(len(x), -1, -1), patches), dim=1)
        tokens = tokens + interpolate_pos_embed(
            self.pos_embed, grid, self.interpolate_offset, self.interpolate_antialias
        )
        if self.register_tokens is None:
            return tokens
        registers = self.register_tokens.expand(len(x), -1, -1)
        return torch.cat((tokens[:, :1], registers, tokens[:, 1:]), dim=1)

    def _patches(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 1 + self.num_register_tokens :]

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(CLS (B, D), patch tokens (B, N, D))`` after the final norm; registers excluded."""
        out = self.embed(x)
        for block in self.blocks:
            out = block(out)
        out = self.norm(out)
        return out[:, 0], self._patches(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x)[0]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normed patch tokens of the blocks ``feature_blocks`` as maps ``(B, D, H / p, W / p)``."""
        h, w = self.patch_grid(x)
        out = self.embed(x)
        maps = []
        for index, block in enumerate(self.blocks):
            if index <= self.feature_blocks[-1]:  # the blocks after the last feature block are not run
                out = block(out)
                if index in self.feature_blocks:
                    patches = self._patches(self.norm(out))
                    maps.append(patches.transpose(1, 2).reshape(len(x), -1, h, w))
        return maps
