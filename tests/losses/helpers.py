"""Shared test utilities: float64 NumPy references, finite differences, the 8-device harness."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P


def random_embeddings(seed: int, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def np_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


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


def sharded(loss_fn, **hparams):
    """The loss over the global batch, inputs sharded on 'data' across all devices."""
    return jax.shard_map(
        lambda *xs: loss_fn(*xs, axis_name="data", **hparams),
        mesh=data_mesh(),
        in_specs=P("data"),
        out_specs=P(),
    )


def assert_distributed_equivalent(loss_fn, *args, rtol=1e-5, atol=1e-6, **hparams):
    """Value, metrics and gradient of the 8-device loss equal the single-device ones."""
    assert len(jax.devices()) == 8, "tests/conftest.py must give 8 virtual devices"
    single = jax.jit(lambda *xs: loss_fn(*xs, **hparams))
    multi = jax.jit(sharded(loss_fn, **hparams))
    (loss_1, metrics_1), (loss_8, metrics_8) = single(*args), multi(*args)
    np.testing.assert_allclose(loss_8, loss_1, rtol=rtol, atol=atol)
    for key in metrics_1:
        np.testing.assert_allclose(metrics_8[key], metrics_1[key], rtol=rtol, atol=atol, err_msg=key)
    argnums = tuple(i for i, a in enumerate(args) if np.issubdtype(np.asarray(a).dtype, np.floating))
    grad_1 = jax.jit(jax.grad(lambda *xs: single(*xs)[0], argnums=argnums))(*args)
    grad_8 = jax.jit(jax.grad(lambda *xs: multi(*xs)[0], argnums=argnums))(*args)
    for g1, g8 in zip(grad_1, grad_8):
        np.testing.assert_allclose(g8, g1, rtol=rtol, atol=atol)
