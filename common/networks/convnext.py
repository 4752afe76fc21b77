"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022), 2D or 3D, as an encoder of the collection.

The architecture of the paper's Sec. 2 and Fig. 4:

- stem: a k4 s4 "patchify" convolution and a LayerNorm over channels;
- four stages of ``depths[i]`` blocks of width ``dims[i]``; a block computes
  ``x + drop_path(gamma * pwconv2(GELU(pwconv1(LN(dwconv(x))))))`` with a k7 depthwise convolution, an
  inverted bottleneck (pointwise 4x expansion) and layer scale ``gamma`` (initialised to 1e-6);
- between stages, a down-sampling layer: LayerNorm then a k2 s2 convolution;
- the classifier input is the global average of the last map followed by a LayerNorm.

``spatial_dims`` 3 replaces every convolution by its 3D counterpart (kernels 4^3, 7^3, 2^3). Parameter
names follow the authors' reference implementation (``downsample_layers.{i}``, ``stages.{i}.{j}.dwconv``,
``.norm``, ``.pwconv1``, ``.pwconv2``, ``.gamma``, final ``norm``; no classifier head): the keys of its 2D
ImageNet checkpoints, but for the classifier's ``head.*``, name the same tensors here.

Inputs must have every spatial size a multiple of 32 (stem 4 x three down-samplings by 2): other sizes
would give feature maps whose sizes are not the input size divided by the stride, which U-Net decoders
cannot align, so they raise a ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from monai.networks.layers import DropPath
from torch import nn

from .heads import trunc_normal_init_
from .swin import tokens as map_tokens

# (depths, dims) of the paper's Sec. 2.6 variants.
VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
}
STEM_STRIDE = 4
DOWNSAMPLE_STRIDE = 2
DEPTHWISE_KERNEL = 7
MLP_RATIO = 4
LAYER_NORM_EPS = 1e-6
FEATURE_STRIDES = (4, 8, 16, 32)
CONV = {2: nn.Conv2d, 3: nn.Conv3d}


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, *spatial)`` map (paper Sec. 2.5, "LN" in the stem and
    the down-sampling layers): each position's C values are normalised, then scaled and shifted."""

    def __init__(self, channels: int, eps: float = LAYER_NORM_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.layer_norm(x.movedim(1, -1), self.weight.shape, self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)


class ConvNeXtBlock(nn.Module):
    """One ConvNeXt block (paper Fig. 4): depthwise k7 conv, LayerNorm, pointwise 4x MLP with GELU, layer
    scale, drop path, residual. The pointwise layers are ``nn.Linear`` on channels-last tokens, as in the
    reference code."""

    def __init__(
        self, dim: int, spatial_dims: int, drop_path: float = 0.0, layer_scale_init: float = 1e-6
    ) -> None:
        super().__init__()
        self.dwconv = CONV[spatial_dims](
            dim, dim, DEPTHWISE_KERNEL, padding=DEPTHWISE_KERNEL // 2, groups=dim
        )
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.pwconv1 = nn.Linear(dim, MLP_RATIO * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(MLP_RATIO * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).movedim(1, -1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + self.drop_path(y.movedim(-1, 1))


class ConvNeXt(nn.Module):
    """ConvNeXt encoder with the collection's interface (``common.networks.encoders``).

    Args:
        in_channels: input channels.
        spatial_dims: 2 or 3.
        variant: a key of :data:`VARIANTS` (``tiny``, ``small``, ``base``).
        depths, dims: four blocks-per-stage counts and four widths, overriding the variant's (small test
            networks).
        drop_path_rate: stochastic depth, rising linearly from 0 over the blocks to this value.
        layer_scale_init: initial value of every block's layer scale ``gamma``.

    ``forward(x)`` gives ``(B, dims[-1])``: the last map averaged over space, then LayerNorm ``norm``.
    ``features(x)`` gives the four stage outputs (strides 4, 8, 16, 32); ``tokens(x)`` gives ``(None, last
    map flattened to (B, N, dims[-1]))``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        spatial_dims: int = 2,
        variant: str = "tiny",
        depths: Sequence[int] | None = None,
        dims: Sequence[int] | None = None,
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1e-6,
    ) -> None:
        super().__init__()
        if spatial_dims not in CONV:
            raise ValueError(f"ConvNeXt: spatial_dims must be 2 or 3, got {spatial_dims}")
        if variant not in VARIANTS:
            raise ValueError(f"ConvNeXt: unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
        depths = tuple(int(d) for d in (depths if depths is not None else VARIANTS[variant][0]))
        dims = tuple(int(d) for d in (dims if dims is not None else VARIANTS[variant][1]))
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"ConvNeXt: depths and dims need 4 entries each, got {depths} and {dims}")
        conv = CONV[spatial_dims]
        self.in_channels = in_channels
        self.spatial_dims = spatial_dims
        self.out_dim = dims[-1]
        self.feature_channels = dims
        self.feature_strides = FEATURE_STRIDES

        stem = nn.Sequential(
            conv(in_channels, dims[0], STEM_STRIDE, stride=STEM_STRIDE), ChannelsFirstLayerNorm(dims[0])
        )
        downsamples = [
            nn.Sequential(
                ChannelsFirstLayerNorm(dims[i - 1]),
                conv(dims[i - 1], dims[i], DOWNSAMPLE_STRIDE, stride=DOWNSAMPLE_STRIDE),
            )
            for i in range(1, 4)
        ]
        self.downsample_layers = nn.ModuleList([stem, *downsamples])
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        starts = [sum(depths[:i]) for i in range(4)]
        self.stages = nn.ModuleList(
            nn.Sequential(
                *(
                    ConvNeXtBlock(dims[i], spatial_dims, rates[starts[i] + j], layer_scale_init)
                    for j in range(depths[i])
                )
            )
            for i in range(4)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=LAYER_NORM_EPS)
        # truncated-normal (0.02) weights and zero biases for convolutions and linear layers (reference code)
        self.apply(partial(trunc_normal_init_, types=(nn.Conv2d, nn.Conv3d, nn.Linear)))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 2 + self.spatial_dims or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ConvNeXt expects input (B, {self.in_channels}, <{self.spatial_dims} spatial sizes>), "
                f"got shape {list(x.shape)}"
            )
        stride = self.feature_strides[-1]
        for size in x.shape[2:]:
            if size % stride:
                raise ValueError(
                    f"ConvNeXt needs every spatial size to be a multiple of {stride}, got {list(x.shape[2:])}"
                )

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage outputs ``(B, dims[i], *size / stride_i)``, strides 4, 8, 16, 32."""
        self._check_input(x)
        maps = []
        for downsample, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(downsample(x))
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.features(x)[-1].flatten(2).mean(-1))

    def tokens(self, x: torch.Tensor) -> tuple[None, torch.Tensor]:
        """``(None, last stage map as tokens (B, N, dims[-1]))``: ConvNeXt has no [CLS] token."""
        return None, map_tokens(self.features(x)[-1])
