"""Vision Transformer encoders ViT-Ti/S/B (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021).

images [B, H, W, C] -> non-overlapping p x p patches, each linearly embedded (a stride-p conv) -> plus a
learned class token and learned position embeddings -> `depth` pre-LN Transformer blocks
(`contrastive.models.text.TransformerBlock`: x + MHA(LN(x)), x + MLP(LN(x)), GELU, 4x hidden) -> final
LayerNorm -> the class token's output (`pool='cls'`) or the mean over the patch tokens (`pool='gap'`).

The position embeddings are made for the grid of the image size the model is built for; an image of
another size gets them bilinearly resized to its grid (the class token's kept), as when fine-tuning at a
new resolution. `config.model.dtype` and `config.model.remat` act as for the ResNets (compute dtype with
float32 parameters and features; each block rematerialised). Parameter counts without a classifier at
224x224 with 16x16 patches (tested): ViT-S/16 21,665,664, ViT-B/16 85,798,656 (timm's totals less the
1000-way head).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from contrastive import checks
from contrastive.models.resnet import compute_dtype
from contrastive.models.text import TransformerBlock

# name -> (width, depth, heads)
VARIANTS = {"vit_ti": (192, 12, 3), "vit_s": (384, 12, 6), "vit_b": (768, 12, 12)}
POOLS = ("cls", "gap")
RULES = {"patch_size": checks.POSITIVE, "pool": checks.one_of(POOLS)}


class ViT(nnx.Module):
    def __init__(self, variant: str, image_shape, *, patch_size: int = 16, pool: str = "cls", rngs: nnx.Rngs,
                 dtype=None, remat: bool = False):
        if variant not in VARIANTS:
            raise ValueError(f"ViT variant {variant!r} is not one of {', '.join(VARIANTS)}")
        height, width_px, channels = image_shape
        if height % patch_size or width_px % patch_size:
            raise ValueError(f"model.vit.patch_size={patch_size} must divide the image size {height} x {width_px}")
        width, depth, heads = VARIANTS[variant]
        self.patch_size, self.pool, self.dtype, self.remat = patch_size, pool, dtype, remat
        self.grid = (height // patch_size, width_px // patch_size)
        self.patch_embed = nnx.Conv(channels, width, kernel_size=(patch_size, patch_size), strides=patch_size,
                                    padding="VALID", dtype=dtype, rngs=rngs)
        self.cls_token = nnx.Param(jnp.zeros((1, 1, width)))
        self.position_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1 + self.grid[0] * self.grid[1],
                                                                                 width)))
        self.blocks = nnx.List([TransformerBlock(width, heads, 4, rngs=rngs, dtype=dtype) for _ in range(depth)])
        self.norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.out_features = width

    def position_embeddings(self, grid: tuple[int, int]) -> jax.Array:
        """[1 + gh * gw, width]: the class token's embedding and the patch grid's, resized to `grid`."""
        table = self.position_embed[...]
        if grid == self.grid:
            return table
        patches = table[1:].reshape(*self.grid, -1)
        resized = jax.image.resize(patches, (*grid, patches.shape[-1]), method="bilinear")
        return jnp.concatenate([table[:1], resized.reshape(grid[0] * grid[1], -1)])

    def __call__(self, x: jax.Array) -> jax.Array:
        patches = self.patch_embed(x)  # [B, gh, gw, width]
        batch, gh, gw, width = patches.shape
        tokens = jnp.concatenate([jnp.broadcast_to(self.cls_token[...], (batch, 1, width)),
                                  patches.reshape(batch, gh * gw, width)], axis=1)
        tokens = tokens + self.position_embeddings((gh, gw))[None].astype(tokens.dtype)
        apply = nnx.remat(lambda block, t: block(t, None)) if self.remat else (lambda block, t: block(t, None))
        for block in self.blocks:
            tokens = apply(block, tokens)
        tokens = self.norm(tokens).astype(jnp.float32)
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(axis=1)


def check(cfg) -> None:
    checks.check_fields(cfg, "model.vit.", RULES)


def builder(variant: str):
    """The `ENCODERS` entry of one variant: `build(config.model, image_shape, rngs)`."""

    def build(cfg, shape, rngs):
        check(cfg.vit)
        return ViT(variant, shape, patch_size=cfg.vit.patch_size, pool=cfg.vit.pool, rngs=rngs,
                   dtype=compute_dtype(cfg), remat=cfg.get("remat", False))

    return build
