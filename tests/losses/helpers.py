"""Shared test utilities: float64 NumPy references, finite differences, cached jitted losses.

XLA compilation dominates the run time of these tests on CPU, so every test of a module reuses the
same compiled ``value_and_grad`` (same shapes; hyper-parameters are traced arguments, not constants).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

N, D = 16, 8  # global batch used by the equivalence tests: 2 rows per virtual device


def random_embeddings(seed: int, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def np_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return np_normalize(x).astype(np.float32)


def np_logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def finite_difference_grad(f, *args: np.ndarray, eps: float = 1e-6) -> list[np.ndarray]:
    """Central differences of a float64 scalar function with respect to each argument."""
    args = [np.array(a, np.float64) for a in args]
    grads = []
    for a in args:
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            orig = a[idx]
            a[idx] = orig + eps
            up = f(*args)
            a[idx] = orig - eps
            down = f(*args)
            a[idx] = orig
            g[idx] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


def data_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("data",))


@functools.cache
def _value_and_grad(loss_fn, num_diff, distributed, static):
    static = dict(static)

    def loss(args, hparams):
        if not distributed:
            return loss_fn(*args, **hparams, **static)
        # Batch arrays are sharded on 'data'; scalars (e.g. a learnable logit scale) are replicated.
        specs = tuple(P("data") if jnp.ndim(a) else P() for a in args)
        return jax.shard_map(
            lambda a, h: loss_fn(*a, **h, axis_name="data", **static),
            mesh=data_mesh(),
            in_specs=(specs, P()),
            out_specs=P(),
        )(args, hparams)

    def value_and_grad(*args, **hparams):
        diff, rest = args[:num_diff], args[num_diff:]
        return jax.value_and_grad(lambda d: loss(d + rest, hparams), has_aux=True)(diff)

    return jax.jit(value_and_grad)


def value_and_grad(loss_fn, num_diff: int, *, distributed: bool = False, **static):
    """Jitted ``(*args, **hparams) -> ((loss, metrics), grads of the first num_diff args)``.

    ``static`` keyword arguments (Python flags, strategies) are fixed at compile time; the ones given
    to the returned function are traced, so changing them does not recompile.
    """
    return _value_and_grad(loss_fn, num_diff, distributed, tuple(sorted(static.items())))


def assert_trees_close(actual, expected, rtol=1e-5, atol=1e-6):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol)


def assert_distributed_equivalent(loss_fn, args, num_diff, static=None, rtol=1e-5, **hparams):
    """Value, metrics and gradients of the loss on 8 devices equal the single-device ones."""
    assert len(jax.devices()) == 8, "tests/conftest.py must give 8 virtual devices"
    static = static or {}
    one = value_and_grad(loss_fn, num_diff, **static)(*args, **hparams)
    eight = value_and_grad(loss_fn, num_diff, distributed=True, **static)(*args, **hparams)
    assert_trees_close(eight, one, rtol=rtol)


def assert_finite(result):
    (loss, metrics), grads = result
    assert np.isfinite(loss), loss
    for leaf in jax.tree.leaves((metrics, grads)):
        assert np.all(np.isfinite(leaf))


def assert_bfloat16_close(loss_fn, args, num_diff, atol=1e-2, **hparams):
    """bfloat16 embeddings give a float32 loss within ``atol`` of the float32 loss."""
    f = value_and_grad(loss_fn, num_diff)
    cast = [jnp.asarray(a, jnp.bfloat16) if i < num_diff else a for i, a in enumerate(args)]
    (loss_bf16, _), _ = f(*cast, **hparams)
    (loss_f32, _), _ = f(*args, **hparams)
    assert loss_bf16.dtype == jnp.float32
    np.testing.assert_allclose(loss_bf16, loss_f32, atol=atol)
