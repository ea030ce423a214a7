"""GradCache: the exact full-batch gradient of a contrastive loss with encoder memory of one sub-batch.

Paper: Gao, Zhang, Han, Callan. "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup", RepL4NLP 2021 (GradCache), Sec. 3.

A contrastive loss couples every example through the representations r = f_theta(x), but the chain rule
splits at r::

    dL/dtheta = sum_k  (d r_k / d theta)^T  (dL / d r_k)          (k = sub-batches)

so the gradient is computed in three passes, none of which holds more than one sub-batch of encoder
activations:

1. representations r_k = f_theta(x_k, key_k) of every sub-batch, without keeping activations;
2. the loss and its gradient ``g = dL/dr`` with respect to the (small) representations only;
3. per sub-batch, ``jax.vjp`` of f_theta at x_k with cotangent g_k, accumulated in a ``lax.scan``.

Pass 3 re-runs the encoder with the SAME random key as pass 1 (dropout, augmentation), so the
recomputed forward is the one whose representations the loss saw, and the gradient is exact. The loss
may be a distributed one (``axis_name`` inside ``jax.shard_map``): ``dL/dr`` is then this device's
share of the global loss gradient, and the parameter gradients are summed over devices at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from contrastive.parallel.ring import as_varying

PyTree = Any


def _split_chunks(batch: PyTree, num_chunks: int) -> PyTree:
    sizes = {x.shape[0] for x in jax.tree.leaves(batch)}
    if len(sizes) != 1:
        raise ValueError(f"every leaf of batch must have the same leading (batch) size, got {sorted(sizes)}")
    (size,) = sizes
    if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 1 or size % num_chunks:
        raise ValueError(f"num_chunks={num_chunks!r} must be a positive int dividing the batch size {size}")
    return jax.tree.map(lambda x: x.reshape((num_chunks, size // num_chunks) + x.shape[1:]), batch)


def _merge_chunks(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)


def grad_cache(
    encode_fn: Callable[[PyTree, PyTree, jax.Array | None], PyTree],
    loss_fn: Callable[[PyTree], tuple[jax.Array, Any]],
    params: PyTree,
    batch: PyTree,
    *,
    num_chunks: int,
    rng: jax.Array | None = None,
    axis_name: str | None = None,
) -> tuple[jax.Array, Any, PyTree]:
    """Loss, aux and the exact gradient ``dL/dparams`` of ``loss_fn(encode_fn(params, batch))``, by sub-batch.

    Args:
      encode_fn: ``(params, sub_batch, key) -> representations`` (a pytree of [rows, ...] arrays);
        ``key`` is the sub-batch's PRNG key, or None when ``rng`` is None.
      loss_fn: ``representations of the whole (local) batch -> (loss, aux)``; may use ``axis_name``.
      params: the encoder parameters (a pytree), replicated over ``axis_name`` if it is given.
      batch: pytree of arrays sharing the leading batch size; split into ``num_chunks`` sub-batches.
      num_chunks: number of sub-batches; must divide the batch size.
      rng: key split into one key per sub-batch, used identically in both encoder passes.
      axis_name: inside ``jax.shard_map``, the mesh axis the batch is sharded over: per-device gradients
        are computed locally and psum'd once (the gradient of the global loss w.r.t. replicated params).

    Returns:
      (loss, aux, grads) with grads shaped like ``params``.
    """
    chunks = _split_chunks(batch, num_chunks)
    keys = None if rng is None else jax.random.split(rng, num_chunks)

    # Pass 1: representations only; nothing here is differentiated, so no activation outlives its chunk.
    reps = _merge_chunks(jax.lax.map(lambda ck: encode_fn(params, *ck), (chunks, keys)))
    # Pass 2: the loss gradient w.r.t. the representations (cheap: they are small).
    (loss, aux), d_reps = jax.value_and_grad(loss_fn, has_aux=True)(reps)
    d_reps = _split_chunks(d_reps, num_chunks)

    # Pass 3: per-chunk vjp. Varying params keep each chunk's gradient local: one psum at the end
    # instead of one per chunk.
    local_params = as_varying(params, axis_name)

    def accumulate(total, chunk):
        inputs, key, d_rep = chunk
        _, vjp = jax.vjp(lambda p: encode_fn(p, inputs, key), local_params)
        return jax.tree.map(jnp.add, total, vjp(d_rep)[0]), None

    zeros = as_varying(jax.tree.map(jnp.zeros_like, params), axis_name)
    grads, _ = jax.lax.scan(accumulate, zeros, (chunks, keys, d_reps))
    if axis_name is not None:
        grads = jax.lax.psum(grads, axis_name)
    return loss, aux, grads
