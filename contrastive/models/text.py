"""A small Transformer text tower (Vaswani et al. 2017, pre-LN as in GPT-2 / CLIP's text encoder).

tokens [B, L] -> token embedding + learned position embedding -> `depth` pre-LN blocks
x = x + MHA(LN(x)); x = x + MLP(LN(x)) (GELU, width * mlp_ratio hidden) -> final LayerNorm -> pooled [B, width]:
at the EOS token (CLIP pools at its end-of-text token) or the mean over the non-PAD tokens. Attention is
bidirectional with PAD keys masked out; ids follow `contrastive.data.tokenizer` (PAD = 0, EOS last).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from contrastive.data.tokenizer import PAD_ID

POOLS = ("eos", "mean")


class TransformerBlock(nnx.Module):
    """x + MHA(LN(x)), then x + MLP(LN(x)); `dtype` is the compute dtype (parameters stay float32)."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int, *, rngs: nnx.Rngs, dtype=None):
        self.norm1 = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(num_heads, width, deterministic=True, decode=False,
                                                keep_rngs=False, dtype=dtype, rngs=rngs)
        self.norm2 = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.fc1 = nnx.Linear(width, width * mlp_ratio, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(width * mlp_ratio, width, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        x = x + self.attention(self.norm1(x), mask=mask)
        return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x))))


class TextTransformer(nnx.Module):
    """[B, L] int ids -> [B, width] pooled features."""

    def __init__(self, vocab_size: int, max_len: int, *, width: int = 64, depth: int = 2, num_heads: int = 4,
                 mlp_ratio: int = 4, pool: str = "eos", rngs: nnx.Rngs):
        if pool not in POOLS:
            raise ValueError(f"model.text.pool={pool!r} is not one of {POOLS}")
        if width % num_heads:
            raise ValueError(f"model.text.width={width} is not divisible by model.text.num_heads={num_heads}")
        self.token_embed = nnx.Embed(vocab_size, width, rngs=rngs)
        self.position_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (max_len, width)))
        self.blocks = nnx.List([TransformerBlock(width, num_heads, mlp_ratio, rngs=rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.pool = pool
        self.out_features = width

    def __call__(self, tokens: jax.Array) -> jax.Array:
        length = tokens.shape[-1]
        valid = tokens != PAD_ID  # [B, L]
        x = self.token_embed(tokens) + self.position_embed[None, :length]
        mask = valid[:, None, None, :]  # [B, heads, queries, keys]: no query attends to padding
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        if self.pool == "eos":
            # EOS is the last non-PAD id of every row (the tokenizer always writes it).
            last = jnp.maximum(valid.sum(-1) - 1, 0)
            return jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
        weights = valid[..., None].astype(x.dtype)
        return (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
