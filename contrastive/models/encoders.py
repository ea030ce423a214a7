"""Flax NNX encoders and projection heads.

A contrastive model is an encoder f (whose output, the "features", is what evaluation probes) followed by
a projection head g (whose output is what the loss sees), as in SimCLR (Chen et al., 2020): the head
absorbs the invariances the loss imposes, so features before it transfer better.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from flax import nnx

from contrastive import checks
from contrastive.models import resnet, vit

NORMS = ("layer", "batch", "none")


def _norm_layer(kind: str, width: int, rngs: nnx.Rngs):
    if kind == "layer":
        return nnx.LayerNorm(width, rngs=rngs)
    if kind == "batch":
        return nnx.BatchNorm(width, momentum=0.9, rngs=rngs)
    if kind == "none":
        return None
    raise ValueError(f"norm={kind!r} is not one of {NORMS}")


class MLP(nnx.Module):
    """Linear layers with ReLU (after LayerNorm, BatchNorm or no norm) between them; the last is linear.

    `norm="batch"` is BatchNorm as in the BYOL/SimSiam projector and predictor. Its statistics are those
    of the whole batch the module is applied to; the train steps apply the model under `jax.jit` to the
    GLOBAL batch sharded over devices, so XLA reduces the statistics across devices: this is synchronised
    BatchNorm (the reference methods' SyncBN) without an `axis_name`. `model.eval()` switches to the
    running averages (momentum 0.9), which evaluation uses.
    """

    def __init__(self, in_features: int, widths: Sequence[int], *, rngs: nnx.Rngs, norm: str = "layer"):
        dims = [in_features, *widths]
        # A bias right before BatchNorm is cancelled by its mean: its gradient is zero up to round-off,
        # which Adam would amplify into lr-sized steps of noise. Leave it out, as ResNets do.
        biased = [norm != "batch" for _ in widths[:-1]] + [True]
        self.layers = nnx.List([nnx.Linear(a, b, use_bias=bias, rngs=rngs)
                                for a, b, bias in zip(dims[:-1], dims[1:], biased)])
        self.norms = nnx.List([_norm_layer(norm, w, rngs) for w in widths[:-1]])

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer, norm in zip(self.layers[:-1], self.norms):
            x = layer(x)
            x = jax.nn.relu(norm(x) if norm is not None else x)
        return self.layers[-1](x)


class SmallCNN(nnx.Module):
    """A small conv net for tiny images: 3x3 convs with GroupNorm, one stride-2 stage, then either global
    average pooling ([B, H, W, C] -> [B, widths[-1]]) or, with `dense`, the flattened map through
    ReLU layers of those widths ([B, H, W, C] -> [B, dense[-1]]).

    On 8x8 digits the class lives in where the strokes are; flattening keeps that layout, which average
    pooling throws away.
    """

    def __init__(self, in_channels: int, widths: Sequence[int] = (32, 64, 128), *, rngs: nnx.Rngs,
                 image_size: Sequence[int] = (8, 8), dense: Sequence[int] = ()):
        dims = [in_channels, *widths]
        # Halve the resolution once, after the first stage: 8x8 digits end at 4x4.
        strides = [1, 2] + [1] * (len(widths) - 2)
        self.convs = nnx.List([
            nnx.Conv(a, b, kernel_size=(3, 3), strides=s, padding="SAME", rngs=rngs)
            for a, b, s in zip(dims[:-1], dims[1:], strides)
        ])
        self.norms = nnx.List([nnx.GroupNorm(w, num_groups=min(8, w), rngs=rngs) for w in widths])
        if dense:
            height, width = (-(-n // 2) if len(widths) > 1 else n for n in image_size)
            self.dense = MLP(height * width * widths[-1], dense, rngs=rngs)
        else:
            self.dense = None
        self.out_features = dense[-1] if dense else widths[-1]

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv, norm in zip(self.convs, self.norms):
            x = jax.nn.relu(norm(conv(x)))
        if self.dense is None:
            return x.mean(axis=(1, 2))
        return jax.nn.relu(self.dense(x.reshape(x.shape[0], -1)))


class FlatMLP(nnx.Module):
    """Flatten the image, then an MLP: [B, H, W, C] -> [B, widths[-1]]."""

    def __init__(self, in_features: int, widths: Sequence[int] = (256, 128), *, rngs: nnx.Rngs):
        self.mlp = MLP(in_features, widths, rngs=rngs)
        self.out_features = widths[-1]

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.mlp(x.reshape(x.shape[0], -1)))


class ContrastiveModel(nnx.Module):
    """Encoder + projection head (+ an optional predictor). `encode` gives the features, `__call__` the
    projections, `predict` the predictor's output on projections (BYOL, SimSiam: Grill et al. 2020)."""

    def __init__(self, encoder: nnx.Module, head: nnx.Module, predictor: nnx.Module | None = None):
        self.encoder = encoder
        self.head = head
        self.predictor = predictor
        self.projection_dim = head.layers[-1].out_features

    def encode(self, x: jax.Array) -> jax.Array:
        return self.encoder(x)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.encoder(x))

    def predict(self, z: jax.Array) -> jax.Array:
        if self.predictor is None:
            raise ValueError("this model has no predictor (config.model.predictor_hidden is empty)")
        return self.predictor(z)


# name -> build(cfg, image_shape (H, W, C), rngs) -> an encoder module with `out_features`.
# A new encoder is one entry (`register_encoder`); `config.model.encoder` selects it.
ENCODERS = {
    "cnn": lambda cfg, shape, rngs: SmallCNN(shape[2], tuple(cfg.widths), image_size=shape[:2],
                                             dense=tuple(cfg.dense), rngs=rngs),
    "mlp": lambda cfg, shape, rngs: FlatMLP(shape[0] * shape[1] * shape[2], tuple(cfg.widths), rngs=rngs),
    **{name: resnet.builder(name) for name in resnet.VARIANTS},  # options in config.model.resnet
    **{name: vit.builder(name) for name in vit.VARIANTS},  # options in config.model.vit
}


def register_encoder(name: str, build) -> None:
    ENCODERS[name] = build


RULES = {"widths": checks.SOME_WIDTHS, "dense": checks.WIDTHS,
         "head_hidden": checks.WIDTHS, "projection_dim": checks.POSITIVE, "head_norm": checks.one_of(NORMS),
         "predictor_hidden": checks.WIDTHS}


def check(cfg) -> None:
    """Raise ValueError naming the first field of `config.model` out of its range."""
    checks.check_fields(cfg, "model.", {"encoder": checks.one_of(ENCODERS), **RULES})
    if "resnet" in cfg:
        resnet.check(cfg.resnet)
    if "vit" in cfg:
        vit.check(cfg.vit)
    dtype, remat = cfg.get("dtype", "float32"), cfg.get("remat", False)
    checks.check_fields({"dtype": dtype}, "model.", {"dtype": checks.one_of(resnet.DTYPES)})
    if (dtype != "float32" or remat) and cfg.encoder not in (*resnet.VARIANTS, *vit.VARIANTS):
        raise ValueError(f"model.dtype={dtype!r} and model.remat={remat!r} apply to the resnet and vit encoders, "
                         f"not model.encoder={cfg.encoder!r}; leave them at 'float32' and False")


def build_model(cfg, image_shape: Sequence[int], *, seed: int) -> ContrastiveModel:
    """The model a `config.model` describes (see configs/common.py for the fields)."""
    check(cfg)
    rngs = nnx.Rngs(seed)
    encoder = ENCODERS[cfg.encoder](cfg, tuple(image_shape), rngs)
    head = MLP(encoder.out_features, (*cfg.head_hidden, cfg.projection_dim), rngs=rngs, norm=cfg.head_norm)
    predictor = None
    if cfg.predictor_hidden:
        predictor = MLP(cfg.projection_dim, (*cfg.predictor_hidden, cfg.projection_dim), rngs=rngs,
                        norm=cfg.head_norm)
    return ContrastiveModel(encoder, head, predictor)


def mixing_modules(model: nnx.Module) -> list[str]:
    """Paths of the layers whose output for one example depends on the other examples of the batch
    (BatchNorm in train mode, or any module with `mixes_examples = True`)."""
    return ["/".join(map(str, path)) for path, node in nnx.iter_graph(model)
            if isinstance(node, nnx.BatchNorm) or getattr(node, "mixes_examples", False)]


def num_params(model: nnx.Module) -> int:
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
