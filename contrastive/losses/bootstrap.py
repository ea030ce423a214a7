"""BYOL and SimSiam: predict the other view's (stop-gradient'ed) embedding; no negatives.

Papers: Grill et al. "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020,
eq. (2) and the symmetrised loss of Sec. 3.1 (BYOL); Chen & He. "Exploring Simple Siamese Representation
Learning", CVPR 2021, eqs. (1)-(2) and Sec. 4.1 (SimSiam, the stop-gradient ablation and the output-std
collapse monitor).

With ``p_v`` the online predictor output of view v, ``t_v`` the target (EMA) projection (BYOL) and
``z_v`` the projection of the same network (SimSiam), ``cos`` the cosine similarity and ``sg`` the
stop-gradient, over the N pairs of the GLOBAL batch::

    BYOL:     L = (1/N) sum_i [(2 - 2 cos(p1_i, sg(t2_i))) + (2 - 2 cos(p2_i, sg(t1_i)))]   in [0, 8]
    SimSiam:  L = (1/N) sum_i [0.5 D(p1_i, sg(z2_i)) + 0.5 D(p2_i, sg(z1_i))],  D(p, z) = -cos(p, z)

Both are affine maps of one quantity, the mean cosine ``c`` of the 2N predicted/target pairs:
BYOL ``L = 4 - 4c``, SimSiam ``L = -c``. ``2 - 2 cos(p, t)`` is the squared distance of the unit vectors.

Reduction: ``psum(local sum) / (2N)`` over the mesh axis, so every device returns the global-batch value
and ``jax.grad`` of the shard_mapped loss equals the single-device gradient. Cosines are computed in float32
with unit vectors ``x / max(|x|, 1e-12)`` (torch's ``F.normalize``; ``core.l2_normalize``, whose zero
vectors give finite values AND finite gradients).

Metrics: ``cos_sim`` = ``c``; ``output_std`` = the SimSiam collapse monitor, the std over the global batch
of each dimension of the l2-normalised targets (both views pooled), averaged over dimensions: about
``1/sqrt(D)`` for outputs spread over the sphere, 0 for a collapsed (constant) output.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from contrastive.losses.core import check_rank, check_same_shape, global_sum, l2_normalize, num_devices

Array = jax.Array

def row_cosine(a: Array, b: Array) -> Array:
    """Cosine similarity of matching rows (float32), shape ``a.shape[:-1]``."""
    return jnp.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def output_std(z: Array, axis_name: str | None = None) -> Array:
    """Mean over dimensions of the per-dimension std over the global rows of the l2-normalised ``z``.

    ``z`` is [..., D]; all leading axes (rows, views) are pooled. Population std (divide by the count),
    from psum'ed first and then centred second moments; stop-gradient'ed (a monitor, not a loss).
    """
    u = jax.lax.stop_gradient(l2_normalize(z)).reshape(-1, z.shape[-1])
    count = u.shape[0] * num_devices(axis_name)
    mean = global_sum(jnp.sum(u, axis=0), axis_name) / count
    var = global_sum(jnp.sum(jnp.square(u - mean), axis=0), axis_name) / count
    return jnp.mean(jnp.sqrt(var))


def _cross_view_cosine(p1, p2, t1, t2, *, stop_gradient: bool, axis_name: str | None):
    """Mean over the 2N global pairs (p1_i, t2_i), (p2_i, t1_i) of their cosine, and the metrics."""
    for name, x in (("p1", p1), ("p2", p2), ("t1", t1), ("t2", t2)):
        check_rank(name, x, 2)
    check_same_shape("p1", p1, "p2", p2)
    check_same_shape("t1", t1, "t2", t2)
    check_same_shape("p1", p1, "t1", t1)
    if stop_gradient:
        t1, t2 = jax.lax.stop_gradient(t1), jax.lax.stop_gradient(t2)
    local = jnp.sum(row_cosine(p1, t2)) + jnp.sum(row_cosine(p2, t1))
    mean_cos = global_sum(local, axis_name) / (2 * p1.shape[0] * num_devices(axis_name))
    metrics = {
        "cos_sim": jax.lax.stop_gradient(mean_cos),
        "output_std": output_std(jnp.stack([t1, t2]), axis_name),
    }
    return mean_cos, metrics


def byol(
    p1: Array, p2: Array, t1: Array, t2: Array, *, axis_name: str | None = None
) -> tuple[Array, dict[str, Array]]:
    """BYOL loss of the global batch: mean over pairs of the symmetrised ``2 - 2 cos`` (range [0, 8]).

    Args:
      p1, p2: [b, D] this device's online predictor outputs of views 1 and 2 (any float dtype).
      t1, t2: [b, D] the target network's projections of views 1 and 2. Always stop-gradient'ed: no
        gradient reaches them whatever the caller passes.
      axis_name: mesh axis the batch is sharded over inside ``jax.shard_map``, or None.

    Returns:
      (loss, metrics): float32 scalar and ``cos_sim`` (mean cosine of the 2N predicted/target pairs) and
      ``output_std`` (collapse monitor of the normalised targets, both views pooled).
    """
    mean_cos, metrics = _cross_view_cosine(p1, p2, t1, t2, stop_gradient=True, axis_name=axis_name)
    return 4.0 - 4.0 * mean_cos, metrics


def simsiam(
    p1: Array,
    p2: Array,
    z1: Array,
    z2: Array,
    *,
    stop_gradient: bool = True,
    axis_name: str | None = None,
) -> tuple[Array, dict[str, Array]]:
    """SimSiam loss of the global batch: ``0.5 D(p1, sg(z2)) + 0.5 D(p2, sg(z1))``, D = -cos (range [-1, 1]).

    Args:
      p1, p2: [b, D] this device's predictor outputs of views 1 and 2 (any float dtype).
      z1, z2: [b, D] the projections (predictor inputs) of views 1 and 2.
      stop_gradient: stop the gradient into z1, z2 (the method). False is the paper's collapse ablation
        (Sec. 4.1): the gradient then also flows through the targets.
      axis_name: mesh axis the batch is sharded over inside ``jax.shard_map``, or None.

    Returns:
      (loss, metrics) with ``cos_sim`` and ``output_std`` (of the normalised z) as in ``byol``.
    """
    mean_cos, metrics = _cross_view_cosine(p1, p2, z1, z2, stop_gradient=stop_gradient, axis_name=axis_name)
    return -mean_cos, metrics
