"""W-MSE: the normalised MSE between positives after whitening the embeddings of each sub-batch.

Paper: Ermolov, Siarohin, Sangineto, Sebe. "Whitening for Self-Supervised Representation Learning", ICML
2021, eqs. (3)-(6) and Sec. 4 (Cholesky whitening, sub-batches of ``w_size``, ``w_iter`` repeats,
``W-MSE 2 / W-MSE 4`` for V = 2 / 4 positives per image); authors' code github.com/htdt/self-supervised
(``methods/w_mse.py``, ``methods/whitening.py``), whose behaviour this module reproduces.

Whitening of n rows x (per view, per group)::

    mu = (1/n) sum_r x_r,   Sigma = (1/(n-1)) sum_r (x_r - mu)(x_r - mu)^T
    Sigma' = (1 - eps) Sigma + eps I = L L^T (Cholesky),   x_hat_r = L^{-1} (x_r - mu)

so the whitened rows have identity covariance. The gradient flows through mu, Sigma and L.

For each of ``w_iter`` iterations the b rows are randomly permuted and split into groups of ``w_size``; each
view's rows of each group are whitened separately. With V views and P = V(V-1)/2 view pairs (i < j)::

    L = 1/(w_iter P B) sum_iter sum_{i<j} sum_r (2 - 2 cos(x_hat_{r,i}, x_hat_{r,j}))

the mean over iterations, view pairs and the B rows of the global batch of the squared distance of the
l2-normalised whitened positives (the authors' ``norm_mse_loss``).

Distributed (``axis_name`` inside ``jax.shard_map``, the global batch of N = b * num_devices rows is the
devices' rows concatenated in device order), flag ``whitening``:

* ``"local"`` (the reference: per-GPU statistics): each device permutes its own b rows with its own key
  ``jax.random.fold_in(key, axis_index)`` and whitens groups of ``w_size`` of its own rows
  (``w_size`` must divide b): iteration k permutes with ``perm = jax.random.permutation(keys[k], b)``,
  ``keys = jax.random.split(device_key, w_iter)``, and group g holds the local rows
  ``perm[g * w_size : (g + 1) * w_size]``.
* ``"global"``: the grouping is a function of the global batch only, so the loss does not depend on the
  number of devices. Iteration k draws ONE permutation ``perm = jax.random.permutation(keys[k], N)``,
  ``keys = jax.random.split(key, w_iter)`` (the same key on every device, not folded), and group g holds
  the global rows ``perm[g * w_size : (g + 1) * w_size]`` (``w_size`` must divide N). Each device sums the
  first and second moments of its own rows per group (one-hot segment sums), psums them, and whitens
  each of its rows with its group's mean and Cholesky factor. This equals ``axis_name=None`` on the
  concatenated batch (values and gradients, up to round-off) for any number of devices.

Without ``axis_name`` the two modes coincide (one device, N = b). In all cases the loss is the psum'ed
mean over the global rows, the same scalar on every device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from contrastive.losses.bootstrap import output_std, row_cosine
from contrastive.losses.core import check_rank, global_sum, num_devices, row_offset

Array = jax.Array

WHITENINGS = ("local", "global")


def _cholesky_solve_rows(cov: Array, centred: Array) -> Array:
    """``L^{-1} x`` for each row x of ``centred`` [n, D], with ``L L^T = cov`` [D, D] (one block, unbatched)."""
    chol = jnp.linalg.cholesky(cov)
    return jax.scipy.linalg.solve_triangular(chol, centred.T, lower=True).T


def _each_block(cov: Array, centred: Array) -> Array:
    """:func:`_cholesky_solve_rows` over the leading axis of ``cov`` [K, D, D] and ``centred`` [K, n, D].

    One block at a time (``jax.lax.map``), never batched: on a CPU host, jaxlib 0.10.2's batched
    triangular solve (``lapack_strsm_ffi`` -> ``ParallelBatchMap``) deadlocks its own two-thread pool
    under ``jax.grad`` at D >= 128 (a W-MSE run hung at its first steps in 2 of 2 tries, and 300 gradient
    calls of the loss hung in 2 of 2; ``--xla_cpu_enable_concurrency_optimized_scheduler=false`` fixed
    the loss alone but not the whole train step). An unbatched solve does not use that pool.
    ``tests/test_xla_workaround.py`` runs both cases in fresh one-device processes. No ``vmap`` may
    wrap this (it would batch the solve again), so every block of a step goes through this one map.
    """
    return jax.lax.map(lambda args: _cholesky_solve_rows(*args), (cov, centred))


def _shrunk_covariance(scatter: Array, count: int, eps) -> Array:
    d = scatter.shape[-1]
    return (1.0 - eps) * scatter / (count - 1) + eps * jnp.eye(d, dtype=jnp.float32)


def whiten(x: Array, *, eps=0.0, axis_name: str | None = None) -> Array:
    """Cholesky whitening ``L^{-1} (x - mu)`` of the rows of ``x`` [n, D] (float32).

    With ``axis_name`` the mean and covariance are those of the rows of ALL devices (psum of sums,
    divided by the global count), and each device whitens its own rows with them.
    ``eps`` shrinks the covariance towards the identity: ``(1 - eps) Sigma + eps I``.
    """
    check_rank("x", x, 2)
    x = x.astype(jnp.float32)
    count = x.shape[0] * num_devices(axis_name)
    mean = global_sum(jnp.sum(x, axis=0), axis_name) / count
    centred = x - mean
    # HIGHEST: TPU/GPU default f32 matmuls round to bf16/tf32, too coarse for a covariance to factorise.
    cov = global_sum(jnp.matmul(centred.T, centred, precision=jax.lax.Precision.HIGHEST), axis_name)
    return _cholesky_solve_rows(_shrunk_covariance(cov, count, eps), centred)


def _is_concrete_positive(value) -> bool:
    try:
        return bool(np.all(np.asarray(value, dtype=np.float64) > 0))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError, TypeError):
        return False


def _whiten_local_blocks(blocks: Array, eps) -> Array:
    """Whiten each block of rows of ``blocks`` [K, n, D] with its own mean and covariance."""
    x = blocks.astype(jnp.float32)
    centred = x - jnp.mean(x, axis=1, keepdims=True)
    scatter = jnp.einsum("knd,kne->kde", centred, centred, precision=jax.lax.Precision.HIGHEST)
    return _each_block(_shrunk_covariance(scatter, x.shape[1], eps), centred)


def _whiten_global_groups(x: Array, groups: Array, num_groups: int, w_size: int, eps, axis_name) -> Array:
    """Whiten each row of ``x`` [K, n, D] with the mean and covariance of its group over ALL devices.

    ``groups`` [K, n]: in each of the K independent blocks (iterations x views), each local row's group in
    [0, num_groups); every group has ``w_size`` rows over all devices. Per-group sums of this device's
    rows (one-hot matmuls) are psum'ed, as in :func:`whiten`.
    """
    x = x.astype(jnp.float32)
    k, n, d = x.shape
    onehot = jax.nn.one_hot(groups, num_groups, dtype=jnp.float32)  # [K, n, G]
    highest = jax.lax.Precision.HIGHEST
    mean = global_sum(jnp.einsum("kng,knd->kgd", onehot, x, precision=highest), axis_name) / w_size
    centred = x - jnp.take_along_axis(mean, groups[..., None], axis=1)  # each row minus its group's mean
    scatter = global_sum(jnp.einsum("kng,knd,kne->kgde", onehot, centred, centred, precision=highest), axis_name)
    cov = _shrunk_covariance(scatter, w_size, eps).reshape(k * num_groups, d, d)
    # Solve this device's rows of each block against each of its groups' factors, keep each row's own group.
    rows = jnp.broadcast_to(centred[:, None], (k, num_groups, n, d)).reshape(k * num_groups, n, d)
    white = _each_block(cov, rows).reshape(k, num_groups, n, d)
    return jnp.einsum("kgnd,kng->knd", white, onehot)


def check_grouping(z_shape, w_size: int, whitening: str, devices: int, eps) -> None:
    """Raise ValueError for impossible groupings of z [b, V, D] (b rows per device) on ``devices`` devices."""
    b, v, d = z_shape
    if v < 2:
        raise ValueError(f"W-MSE needs at least 2 views per image, got z of shape {z_shape} (V = {v})")
    if whitening not in WHITENINGS:
        raise ValueError(f"whitening must be one of {WHITENINGS}, got {whitening!r}")
    if w_size <= d and not _is_concrete_positive(eps):
        raise ValueError(
            f"w_size ({w_size}) must be larger than the embedding dimension D ({d}): the covariance of "
            f"w_size centred rows has rank <= w_size - 1 < D, so it is singular and has no Cholesky factor "
            f"(or shrink it with a concrete eps > 0)"
        )
    if whitening == "local" and b % w_size:
        raise ValueError(f"local whitening: w_size ({w_size}) must divide the local batch ({b} rows)")
    if whitening == "global" and (b * devices) % w_size:
        raise ValueError(
            f"global whitening: w_size ({w_size}) must divide the global batch ({b * devices} rows = "
            f"{b} rows x {devices} devices)"
        )


def wmse(
    z: Array,
    *,
    key: Array,
    w_size: int = 128,
    w_iter: int = 1,
    eps=0.0,
    whitening: str = "local",
    axis_name: str | None = None,
) -> tuple[Array, dict[str, Array]]:
    """W-MSE loss of the global batch (mean over iterations, view pairs and rows; range [0, 4]).

    Args:
      z: [b, V, D] this device's embeddings, V >= 2 positives (views) per image (any float dtype).
      key: PRNG key of the random grouping, the same on every device.
      w_size: rows per whitening group; must exceed D unless eps > 0. "local": groups of this device's
        rows, w_size divides b. "global": groups of the global batch, w_size divides N = b * num_devices.
      w_iter: number of random groupings averaged per step.
      eps: covariance shrinkage ``(1 - eps) Sigma + eps I`` (the authors' ``w_eps``).
      whitening: "local" (the reference: each device permutes its own rows with
        ``fold_in(key, axis_index)`` and whitens groups of them with its own statistics) or "global"
        (one permutation of the N global rows from ``key``, group statistics psum'ed over ``axis_name``;
        equals ``axis_name=None`` on the concatenated batch for any number of devices). The two coincide
        without ``axis_name``.
      axis_name: mesh axis the batch is sharded over inside ``jax.shard_map``, or None.

    Returns:
      (loss, metrics): float32 scalar and ``cos_sim`` (mean cosine of the whitened positive pairs) and
      ``output_std`` (collapse monitor of the l2-normalised un-whitened z, all views pooled; see
      ``bootstrap.output_std``).
    """
    check_rank("z", z, 3)
    b, v, d = z.shape
    devices = num_devices(axis_name)
    check_grouping(z.shape, w_size, whitening, devices, eps)
    first, second = np.triu_indices(v, k=1)

    keys = jax.random.split(key, w_iter)
    if whitening == "global" and axis_name is not None:
        n = b * devices
        # One permutation of the global rows per iteration; a row's group is its position in it // w_size.
        position = jax.vmap(lambda k: jnp.argsort(jax.random.permutation(k, n)))(keys)  # inverse permutations
        groups = jax.lax.dynamic_slice_in_dim(position, row_offset(b, axis_name), b, axis=1) // w_size  # [I, b]
        blocks = jnp.broadcast_to(jnp.moveaxis(z, 1, 0)[None], (w_iter, v, b, d)).reshape(w_iter * v, b, d)
        groups = jnp.repeat(groups, v, axis=0)  # [I * V, b]: block (i, view) groups rows as iteration i
        white = _whiten_global_groups(blocks, groups, n // w_size, w_size, eps, axis_name)
        white = jnp.moveaxis(white.reshape(w_iter, v, b, d), 1, 2)  # [I, b, V, D], rows in z's order
    else:  # each device groups its own rows (no axis_name: the whole batch)
        if axis_name is not None:
            keys = jax.random.split(jax.random.fold_in(key, jax.lax.axis_index(axis_name)), w_iter)
        perms = jax.vmap(lambda k: jax.random.permutation(k, b))(keys)  # [I, b]
        # Iteration i, group g holds rows perms[i, g * w_size:(g + 1) * w_size]; whiten each (i, g, view).
        grouped = z[perms].reshape(w_iter, b // w_size, w_size, v, d)
        blocks = jnp.moveaxis(grouped, 3, 2).reshape(-1, w_size, d)  # [(I, G, V), w_size, D]
        white = _whiten_local_blocks(blocks, eps).reshape(w_iter, b // w_size, v, w_size, d)
        white = jnp.moveaxis(white, 2, 3).reshape(w_iter, b, v, d)  # rows of z[perms[i]]

    # The sum over rows does not depend on their order.
    local = jnp.sum(row_cosine(white[:, :, first], white[:, :, second]))
    mean_cos = global_sum(local, axis_name) / (w_iter * len(first) * b * devices)
    metrics = {"cos_sim": jax.lax.stop_gradient(mean_cos), "output_std": output_std(z, axis_name)}
    return 2.0 - 2.0 * mean_cos, metrics
