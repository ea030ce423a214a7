"""Where the tiled CLIP loss's forward + backward spends its time on one device.

    python experiments/tile_profile.py --batch 16384 --dim 128

For each tile size, beside loss_memory's square REFERENCE matmul timed in the same process (this
machine is shared and its speed drifts), it times

* the tiled CLIP loss (``clip(..., chunk_size=c)``), forward + backward and forward only;
* the same two-level tile loop doing only the loss's four matmuls per tile (similarities, the backward's
  recomputed similarities, and the two input gradients) and no elementwise work.

The difference between the two is the elementwise work (log-sum-exp in both directions, softmax
probabilities, masks) and the loop itself. Useful FLOPs: 6 B^2 d (three B x B x d matmuls); the tile loop
executes 8 B^2 d (the recomputation is the price of never storing the logits).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp

import contrastive  # noqa: F401 - sets the XLA:CPU workaround flag before any computation
from contrastive.losses import clip

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from experiments.loss_memory import _time, _unit_rows, square_matmul_flops  # noqa: E402


def best_seconds(fn, *args) -> float:
    return _time(jax.jit(fn).lower(*args).compile(), args)


def tile_matmuls_only(batch: int, dim: int, tile: int):
    """The tile loop of the loss with only its four matmuls per tile."""

    def run(queries, keys):
        q_tiles, k_tiles = queries.reshape(batch // tile, tile, dim), keys.reshape(batch // tile, tile, dim)

        def row(dk, q):
            def col(dq, k):
                sims, recomputed = q @ k.T, (q @ k.T) * 1.0001  # distinct, so XLA cannot merge them
                return dq + recomputed @ k, sims.T @ q

            dq, dk_row = jax.lax.scan(col, jnp.zeros((tile, dim)), k_tiles)
            return dk + dk_row, dq

        return jax.lax.scan(row, jnp.zeros((batch // tile, tile, dim)), q_tiles)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--tiles", type=int, nargs="+", default=[256, 512, 1024])
    args = parser.parse_args()
    b, d = args.batch, args.dim
    x, y = _unit_rows(jax.random.key(0), b, d), _unit_rows(jax.random.key(1), b, d)
    useful = 6 * b * b * d
    for tile in args.tiles:
        before = square_matmul_flops()
        loss = lambda a, c, tile=tile: clip(a, c, logit_scale=10.0, chunk_size=tile)[0]
        full = best_seconds(jax.value_and_grad(loss, argnums=(0, 1)), x, y)
        forward = best_seconds(loss, x, y)
        matmuls = best_seconds(tile_matmuls_only(b, d, tile), x, y)
        reference = max(before, square_matmul_flops())
        print(
            f"B={b:,} d={d} tile={tile}: fwd+bwd {full:.2f} s = {useful / full / 1e9:.1f} GFLOP/s useful = "
            f"{useful / full / reference:.0%} of the square matmul ({reference / 1e9:.1f} GFLOP/s beside it); "
            f"forward {forward:.2f} s; the tile loop's 4 matmuls alone {matmuls:.2f} s "
            f"({8 * b * b * d / matmuls / 1e9:.1f} GFLOP/s executed, {matmuls / full:.0%} of fwd+bwd)",
            flush=True,
        )


if __name__ == "__main__":
    main()
