"""The dual encoder of CLIP (Radford et al. 2021), ALIGN (Jia et al. 2021) and SigLIP (Zhai et al. 2023).

An image tower f (the `ContrastiveModel` of the image-only runs: encoder + projection head) and a text
tower g (`TextTransformer` + a linear projection) map an image x and a caption y to unit vectors

    u = f(x) / ||f(x)||,   v = g(y) / ||g(y)||,

whose plain dot products the image-text losses score. The loss's learnable temperature lives here, as
in CLIP: the parameter is t' and the scale is t = exp(min(t', log t_max)), t_max = 100 (CLIP clips it
so that logits never exceed 100); CLIP initialises t' = log(1/0.07), SigLIP t' = log 10 and the bias
b = -10, which starts every pair, matched or not, near sigmoid(-10 + 10 <u, v>) and so avoids the large
initial correction of the many negatives (Zhai et al. 2023, Sec. 3.3).

LiT (Zhai et al. 2022, "locked-image text tuning"): with `lock_image`, the image encoder's features
are a constant of the loss (stop_gradient: no backward pass through the tower, saving its compute), and
the optimizer zeroes that subtree's updates (`optax.set_to_zero` via `lit_param_labels`): decoupled
weight decay (AdamW) would otherwise still shrink the locked weights. The image projection head stays
trainable, so the locked features can still be mapped into the shared space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from contrastive.losses.core import l2_normalize
from contrastive.models.encoders import ContrastiveModel, build_model
from contrastive.models.text import TextTransformer

CLIP_LOGIT_SCALE_INIT = math.log(1 / 0.07)
SIGLIP_LOGIT_SCALE_INIT = math.log(10.0)
SIGLIP_LOGIT_BIAS_INIT = -10.0
LOGIT_SCALE_MAX = 100.0
LOCKED_SUBTREE = ("image", "encoder")


class TextTower(nnx.Module):
    """Transformer features [B, width] then a linear projection (no bias) to the shared space."""

    def __init__(self, transformer: TextTransformer, projection_dim: int, *, rngs: nnx.Rngs):
        self.transformer = transformer
        self.projection = nnx.Linear(transformer.out_features, projection_dim, use_bias=False, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.projection(self.transformer(tokens))


class DualEncoder(nnx.Module):
    """`embed_image`, `embed_text` (unit rows), `logit_scale_and_bias()`; `encode` = image features."""

    def __init__(self, image: ContrastiveModel, text: TextTower, *, logit_scale_init: float,
                 logit_bias_init: float | None = None, logit_scale_max: float = LOGIT_SCALE_MAX,
                 lock_image: bool = False):
        self.image = image
        self.text = text
        self.logit_scale = nnx.Param(jnp.asarray(logit_scale_init, jnp.float32))  # t' (a log)
        self.logit_bias = None if logit_bias_init is None else nnx.Param(jnp.asarray(logit_bias_init, jnp.float32))
        self.log_scale_max = math.log(logit_scale_max)
        self.lock_image = lock_image

    def encode(self, images: jax.Array) -> jax.Array:
        """Image-tower features before the projection head (what the probes score)."""
        return self.image.encode(images)

    def embed_image(self, images: jax.Array) -> jax.Array:
        features = self.image.encode(images)
        if self.lock_image:
            features = jax.lax.stop_gradient(features)
        return l2_normalize(self.image.head(features))

    def embed_text(self, tokens: jax.Array) -> jax.Array:
        return l2_normalize(self.text(tokens))

    def logit_scale_and_bias(self) -> tuple[jax.Array, jax.Array | None]:
        """(t, b): t = exp(min(t', log t_max)); b is None without a bias parameter."""
        scale = jnp.exp(jnp.minimum(self.logit_scale[...], self.log_scale_max))
        return scale, None if self.logit_bias is None else self.logit_bias[...]

    def __call__(self, images: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.embed_image(images), self.embed_text(tokens)


def build_dual_encoder(cfg, image_shape: Sequence[int], vocab_size: int, *, seed: int,
                       with_bias: bool) -> DualEncoder:
    """The dual encoder `config.model` describes (image tower as `build_model`, text tower `cfg.text`)."""
    image = build_model(cfg, image_shape, seed=seed)
    rngs = nnx.Rngs(seed + 1)  # a different stream from the image tower's
    t = cfg.text
    transformer = TextTransformer(vocab_size, t.max_len, width=t.width, depth=t.depth, num_heads=t.num_heads,
                                  mlp_ratio=t.mlp_ratio, pool=t.pool, rngs=rngs)
    text = TextTower(transformer, cfg.projection_dim, rngs=rngs)
    return DualEncoder(image, text, logit_scale_init=cfg.logit_scale_init,
                       logit_bias_init=cfg.logit_bias_init if with_bias else None,
                       logit_scale_max=cfg.logit_scale_max, lock_image=cfg.lit.lock_image)


def _path_keys(path) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)


def lit_param_labels(params) -> object:
    """'locked' for every leaf of the image encoder, 'trainable' elsewhere (for `optax.multi_transform`)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "locked" if _path_keys(path)[: len(LOCKED_SUBTREE)] == LOCKED_SUBTREE else "trainable",
        params)


def lock_image_tower(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` on the trainable parameters, zero updates (no decay, no momentum) on the image encoder."""
    return optax.multi_transform({"trainable": tx, "locked": optax.set_to_zero()}, lit_param_labels)
