"""DirectPred: a linear predictor set in closed form from the feature correlation; no predictor gradient.

Paper: Tian, Chen, Ganguli. "Understanding Self-supervised Learning Dynamics without Contrastive Pairs",
ICML 2021, Sec. 5, eqs. (18)-(19); authors' code github.com/facebookresearch/luckmatters (ssl/real-dataset,
``byol_trainer.py``: ``predictor_reg=corr``, ``balance_type=boost_scale``, ``dyn_convert=2``).

With f the online features that enter the predictor (both views pooled, stop-gradient'ed) the state is an
exponential moving average of their (uncentred) correlation over the GLOBAL batch, and the predictor is::

    F   <- rho F + (1 - rho) E[f f^T]                                   (eq. 19, rho = ``dyn_lambda``)
    F_s  = (F + F^T) / 2 = U diag(lambda) U^T,   lambda_j <- max(lambda_j, 0)
    p_j  = sqrt(lambda_j / max_k lambda_k) + eps                        (eq. 18)
    W    = U diag(p) U^T                                                (symmetric, eigenvalues in [eps, 1+eps])

and the predictor output is ``f @ W`` (= ``W f`` per row; W is symmetric). ``W`` is returned under
stop_gradient: nothing is learned in the predictor and no gradient flows through ``F`` or the eigh.
``W`` does not change when ``F`` is multiplied by a positive constant.

Initialisation: the authors' EMA (``Accumulator`` with ``dyn_lambda``) starts empty and its first update
stores the first batch's ``E[f f^T]`` itself, not ``(1 - rho) E[f f^T]``. Here the state starts as the zero
matrix (:func:`init_correlation`) and :func:`update_correlation` treats an all-zero ``F`` as empty in the same
way, so the recursion matches the reference from the first step. A zero ``F`` that reaches
:func:`predictor_weights` (no update yet; max lambda = 0) gives ``W = I``: the cosine losses of BYOL / SimSiam
only see the direction of ``f W``, and I is the limit of every ``F = c I``.

The authors' example run uses rho = 0.3, eps = 0.01 and recomputes W after every optimizer step
(``predictor_freq=1``) from the F that includes that step's features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def init_correlation(dim: int) -> Array:
    """The empty correlation state: a [dim, dim] float32 zero matrix (see the module docstring)."""
    return jnp.zeros((dim, dim), jnp.float32)


def _check_rho(rho) -> None:
    try:
        concrete = float(np.asarray(rho, dtype=np.float64))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError, TypeError):
        return
    if not 0.0 <= concrete <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho!r}")


def update_correlation(corr: Array, f: Array, *, rho, axis_name: str | None = None) -> Array:
    """``rho * F + (1 - rho) * E[f f^T]`` with the mean over the global rows; ``E[f f^T]`` if F is all zero.

    Args:
      corr: [D, D] the current state F (replicated on every device).
      f: [..., D] this device's predictor inputs; all leading axes are pooled (pass both views, e.g.
        [b, 2, D], as the authors do). Stop-gradient'ed.
      rho: EMA decay in [0, 1].
      axis_name: mesh axis the batch is sharded over inside ``jax.shard_map``, or None: the mean is then
        psum(local sum) / global count, so every device holds the same F.

    Returns:
      The new [D, D] float32 state (no gradient flows through it).
    """
    if jnp.ndim(corr) != 2 or corr.shape[0] != corr.shape[1]:
        raise ValueError(f"corr must be a square [D, D] matrix, got shape {jnp.shape(corr)}")
    if jnp.ndim(f) < 2 or f.shape[-1] != corr.shape[0]:
        raise ValueError(f"f must be [..., D] with D = {corr.shape[0]}, got shape {jnp.shape(f)}")
    _check_rho(rho)
    f = jax.lax.stop_gradient(f).astype(jnp.float32).reshape(-1, f.shape[-1])
    corr = jax.lax.stop_gradient(corr).astype(jnp.float32)
    outer = jnp.matmul(f.T, f, precision=jax.lax.Precision.HIGHEST)
    count = f.shape[0]
    if axis_name is not None:
        outer, count = jax.lax.psum(outer, axis_name), count * jax.lax.axis_size(axis_name)
    batch = outer / count
    return jnp.where(jnp.all(corr == 0), batch, rho * corr + (1.0 - rho) * batch)


def predictor_weights(corr: Array, *, eps=0.1) -> Array:
    """DirectPred's symmetric predictor ``W = U diag(sqrt(lambda / max lambda) + eps) U^T`` of ``F``.

    ``F`` is symmetrised and its negative eigenvalues (round-off) are clipped at 0; the predictor output
    is ``f @ W``. Returns a float32 [D, D] matrix under stop_gradient; ``W = I`` for ``F = 0``.
    """
    if jnp.ndim(corr) != 2 or corr.shape[0] != corr.shape[1]:
        raise ValueError(f"corr must be a square [D, D] matrix, got shape {jnp.shape(corr)}")
    corr = jax.lax.stop_gradient(corr).astype(jnp.float32)
    eigenvalues, eigenvectors = jnp.linalg.eigh(0.5 * (corr + corr.T))
    eigenvalues = jnp.maximum(eigenvalues, 0.0)
    top = jnp.max(eigenvalues)
    p = jnp.sqrt(eigenvalues / jnp.where(top > 0, top, 1.0)) + eps
    weights = jnp.matmul(eigenvectors * p, eigenvectors.T, precision=jax.lax.Precision.HIGHEST)
    weights = jnp.where(top > 0, weights, jnp.eye(corr.shape[0], dtype=jnp.float32))
    return jax.lax.stop_gradient(weights)
