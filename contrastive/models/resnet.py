"""ResNet-18/34/50 encoders (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016), v1.5.

v1.5 (torchvision's and most SSL codebases'): a bottleneck block strides on its 3x3 conv, not its first
1x1. The encoder ends with global average pooling; its output, the features, is 512 x `width` wide for
ResNet-18/34 (basic blocks) and 2048 x `width` for ResNet-50 (bottleneck blocks), with `width` the channel
multiplier (1 is the published network; 0.25 trains on a CPU).

Options (`config.model.resnet`):

* `stem`: `imagenet` (7x7/2 conv + 3x3/2 max-pool) or `cifar` (3x3/1 conv, no pool: the SimCLR CIFAR-10
  variant for 32x32 images).
* `norm`: `batch` (BatchNorm; the train step applies the model under `jax.jit` to the global batch, so its
  statistics are the global batch's, synchronised BatchNorm; evaluation uses the running averages) or
  `group` (GroupNorm with 32 groups, or fewer for narrow layers; no example mixing, so GradCache applies).
* `zero_init_residual`: the last norm of each block starts with scale 0, so every block starts as the
  identity (Goyal et al. 2017).

`config.model.dtype` (`float32` | `bfloat16`) is the compute dtype of the convolutions and norms; the
parameters stay float32 and the features are returned in float32. `config.model.remat` recomputes each
block's activations in the backward pass (`nnx.remat`) instead of keeping them: the same gradient, less
activation memory.

Convolutions have no bias (a norm follows each) and start from He-normal (fan-out) weights. Parameter
counts at width 1, without a classifier (tested): ResNet-18 11,176,512; ResNet-34 21,284,672; ResNet-50
23,508,032; ResNet-18 with the CIFAR stem 11,168,832.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from contrastive import checks

# name -> (block kind, blocks per stage)
VARIANTS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
            "resnet50": ("bottleneck", (3, 4, 6, 3))}
STEMS, NORMS = ("imagenet", "cifar"), ("batch", "group")
RULES = {"stem": checks.one_of(STEMS), "norm": checks.one_of(NORMS), "width": checks.POSITIVE}
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = {"basic": 1, "bottleneck": 4}
_HE = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(a: int, b: int, k: int, stride: int, rngs: nnx.Rngs, dtype=None) -> nnx.Conv:
    return nnx.Conv(a, b, kernel_size=(k, k), strides=stride, padding=k // 2, use_bias=False, kernel_init=_HE,
                    dtype=dtype, rngs=rngs)


def _norm(kind: str, width: int, rngs: nnx.Rngs, zero: bool = False, dtype=None):
    scale_init = nnx.initializers.zeros if zero else nnx.initializers.ones
    if kind == "batch":
        return nnx.BatchNorm(width, momentum=0.9, epsilon=1e-5, scale_init=scale_init, dtype=dtype, rngs=rngs)
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if width % g == 0)
    return nnx.GroupNorm(width, num_groups=groups, scale_init=scale_init, dtype=dtype, rngs=rngs)


class Block(nnx.Module):
    """A residual block: basic (3x3, 3x3) or bottleneck (1x1, 3x3 with the stride, 1x1 to 4x), each conv
    followed by its norm, ReLU after the sum with the shortcut (a strided 1x1 conv + norm when the shape
    changes)."""

    def __init__(self, kind: str, in_ch: int, width: int, stride: int, norm: str, zero_init: bool,
                 rngs: nnx.Rngs, dtype=None):
        out_ch = width * EXPANSION[kind]
        if kind == "basic":
            shapes = [(in_ch, width, 3, stride), (width, width, 3, 1)]
        else:
            shapes = [(in_ch, width, 1, 1), (width, width, 3, stride), (width, out_ch, 1, 1)]
        self.convs = nnx.List([_conv(a, b, k, s, rngs, dtype) for a, b, k, s in shapes])
        self.norms = nnx.List([_norm(norm, b, rngs, zero=zero_init and i == len(shapes) - 1, dtype=dtype)
                               for i, (_, b, _, _) in enumerate(shapes)])
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nnx.List([_conv(in_ch, out_ch, 1, stride, rngs, dtype),
                                      _norm(norm, out_ch, rngs, dtype=dtype)])
        else:
            self.shortcut = None

    def __call__(self, x):
        y = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            y = norm(conv(y))
            if i < len(self.convs) - 1:
                y = nnx.relu(y)
        skip = x if self.shortcut is None else self.shortcut[1](self.shortcut[0](x))
        return nnx.relu(y + skip)


class ResNet(nnx.Module):
    """[B, H, W, C] images -> [B, out_features] globally average-pooled features."""

    def __init__(self, variant: str, in_channels: int, *, rngs: nnx.Rngs, stem: str = "imagenet",
                 norm: str = "batch", width: float = 1.0, zero_init_residual: bool = False, dtype=None,
                 remat: bool = False):
        if variant not in VARIANTS:
            raise ValueError(f"ResNet variant {variant!r} is not one of {', '.join(VARIANTS)}")
        kind, depths = VARIANTS[variant]
        widths = [max(1, round(w * width)) for w in STAGE_WIDTHS]
        self.stem_kind, self.remat, self.dtype = stem, remat, dtype
        self.stem = _conv(in_channels, widths[0], 7 if stem == "imagenet" else 3, 2 if stem == "imagenet" else 1,
                          rngs, dtype)
        self.stem_norm = _norm(norm, widths[0], rngs, dtype=dtype)
        blocks, in_ch = [], widths[0]
        for stage, (w, depth) in enumerate(zip(widths, depths)):
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(Block(kind, in_ch, w, stride, norm, zero_init_residual, rngs, dtype))
                in_ch = w * EXPANSION[kind]
        self.blocks = nnx.List(blocks)
        self.out_features = in_ch

    def __call__(self, x):
        x = x.astype(self.dtype) if self.dtype is not None else x
        x = nnx.relu(self.stem_norm(self.stem(x)))
        if self.stem_kind == "imagenet":
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        apply = nnx.remat(lambda block, y: block(y)) if self.remat else (lambda block, y: block(y))
        for block in self.blocks:
            x = apply(block, x)
        return x.astype(jnp.float32).mean(axis=(1, 2))


DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def compute_dtype(cfg):
    """`config.model.dtype` as a flax `dtype` (None: float32, the parameters' own)."""
    return DTYPES[cfg.get("dtype", "float32")]


def check(cfg) -> None:
    """Raise ValueError naming the first field of `config.model.resnet` out of its range."""
    checks.check_fields(cfg, "model.resnet.", RULES)


def builder(variant: str):
    """The `ENCODERS` entry of one variant: `build(config.model, image_shape, rngs)`."""

    def build(cfg, shape, rngs):
        r = cfg.resnet
        check(r)
        return ResNet(variant, shape[2], rngs=rngs, stem=r.stem, norm=r.norm, width=r.width,
                      zero_init_residual=r.zero_init_residual, dtype=compute_dtype(cfg),
                      remat=cfg.get("remat", False))

    return build
