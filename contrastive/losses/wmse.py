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

import functools

import jax
import jax.numpy as jnp
import numpy as np

from contrastive.losses.bootstrap import output_std, row_cosine
from contrastive.losses.core import check_rank, global_sum, num_devices, row_offset

Array = jax.Array

WHITENINGS = ("local", "global")


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
    cov = (1.0 - eps) * cov / (count - 1) + eps * jnp.eye(x.shape[1], dtype=jnp.float32)
    chol = jnp.linalg.cholesky(cov)
    return jax.scipy.linalg.solve_triangular(chol, centred.T, lower=True).T


def _is_concrete_positive(value) -> bool:
    try:
        return bool(np.all(np.asarray(value, dtype=np.float64) > 0))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError, TypeError):
        return False


def _whiten_groups_global(x: Array, groups: Array, num_groups: int, w_size: int, eps, axis_name) -> Array:
    """Whiten each row of ``x`` [n, D] with the mean and covariance of its group over ALL devices.

    ``groups`` [n]: each local row's group in [0, num_groups); every group has ``w_size`` rows in total.
    Per-group sums of this device's rows (one-hot matmuls) are psum'ed, as in :func:`whiten`.
    """
    x = x.astype(jnp.float32)
    n, d = x.shape
    onehot = jax.nn.one_hot(groups, num_groups, dtype=jnp.float32)  # [n, G]
    highest = jax.lax.Precision.HIGHEST
    mean = global_sum(jnp.matmul(onehot.T, x, precision=highest), axis_name) / w_size  # [G, D]
    centred = x - mean[groups]
    cov = global_sum(jnp.einsum("ng,nd,ne->gde", onehot, centred, centred, precision=highest), axis_name)
    cov = (1.0 - eps) * cov / (w_size - 1) + eps * jnp.eye(d, dtype=jnp.float32)
    chol = jnp.linalg.cholesky(cov)  # [G, D, D]
    # Solve the local rows against every group's factor ([G, D, n]) and keep each row's own group.
    white = jax.scipy.linalg.solve_triangular(chol, jnp.broadcast_to(centred.T, (num_groups, d, n)), lower=True)
    return white[groups, :, jnp.arange(n)]


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

    if whitening == "global" and axis_name is not None:
        n = b * devices

        def whiten_rows(k):  # one permutation of the global rows; group = position in it // w_size
            position = jnp.argsort(jax.random.permutation(k, n))  # the inverse permutation
            groups = jax.lax.dynamic_slice(position, (row_offset(b, axis_name),), (b,)) // w_size
            whiten_view = lambda x: _whiten_groups_global(x, groups, n // w_size, w_size, eps, axis_name)
            return jax.vmap(whiten_view, 1, 1)(z)  # [b, V, D]

    else:  # each device groups its own rows (no axis_name: the whole batch)
        if axis_name is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        # [groups, w_size, V, D] -> whiten each (group, view) block of rows.
        whiten_groups = jax.vmap(jax.vmap(functools.partial(whiten, eps=eps), 1, 1))

        def whiten_rows(k):
            perm = jax.random.permutation(k, b)
            return whiten_groups(z[perm].reshape(b // w_size, w_size, v, d)).reshape(b, v, d)  # rows of z[perm]

    def iteration_cosine_sum(k):  # the sum over rows does not depend on their order
        white = whiten_rows(k)
        return jnp.sum(row_cosine(white[:, first], white[:, second]))

    local = jnp.sum(jax.vmap(iteration_cosine_sum)(jax.random.split(key, w_iter)))
    mean_cos = global_sum(local, axis_name) / (w_iter * len(first) * b * devices)
    metrics = {"cos_sim": jax.lax.stop_gradient(mean_cos), "output_std": output_std(z, axis_name)}
    return 2.0 - 2.0 * mean_cos, metrics
