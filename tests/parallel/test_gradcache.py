"""GradCache gradients equal the plain full-batch gradients (1 device with dropout, 8 devices)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive.losses import clip, nt_xent
from contrastive.parallel import grad_cache
from tests.losses.helpers import data_mesh

N, D_IN, HIDDEN, D_OUT, CHUNKS = 32, 6, 16, 8, 4


def init_mlp(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return {
        "w1": jax.random.normal(k1, (D_IN, HIDDEN)) / np.sqrt(D_IN),
        "b1": 0.1 * jax.random.normal(k2, (HIDDEN,)),
        "w2": jax.random.normal(k3, (HIDDEN, D_OUT)) / np.sqrt(HIDDEN),
    }


def mlp(params, x, key=None, rate=0.25):
    h = jax.nn.gelu(x @ params["w1"] + params["b1"])
    if key is not None:  # dropout: the same key must give the same mask in both GradCache passes
        h = jnp.where(jax.random.bernoulli(key, 1 - rate, h.shape), h / (1 - rate), 0.0)
    return h @ params["w2"]


def encode_pair(params, batch, key):
    """Two inputs per example (two views, or an image and a text) through one encoder."""
    k1, k2 = (None, None) if key is None else jax.random.split(key)
    return mlp(params, batch[0], k1), mlp(params, batch[1], k2)


def pair_loss(name, reps, axis_name=None):
    a, b = reps
    if name == "clip":
        return clip(a, b, logit_scale=5.0, axis_name=axis_name)
    return nt_xent(a, b, temperature=0.5, axis_name=axis_name)


def make_batch(seed=1):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((N, D_IN)).astype(np.float32) for _ in range(2))


def plain_grads(name, params, batch, rng):
    """Full-batch gradient, with the same per-sub-batch keys as GradCache (so dropout matches)."""
    keys = [None] * CHUNKS if rng is None else list(jax.random.split(rng, CHUNKS))
    split = [jax.tree.map(lambda x, i=i: x[i * N // CHUNKS:(i + 1) * N // CHUNKS], batch) for i in range(CHUNKS)]

    def loss(p):
        reps = [encode_pair(p, s, k) for s, k in zip(split, keys)]
        return pair_loss(name, jax.tree.map(lambda *r: jnp.concatenate(r), *reps))[0]

    return jax.jit(jax.value_and_grad(loss))(params)


def assert_relative_error(actual, expected, tol=1e-5):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        assert np.linalg.norm(a - e) / np.linalg.norm(e) < tol


@functools.cache
def gradcache_one_device(name):
    return jax.jit(
        lambda p, b, r: grad_cache(encode_pair, functools.partial(pair_loss, name), p, b, num_chunks=CHUNKS, rng=r)
    )


@pytest.mark.parametrize("name", ["nt_xent", pytest.param("clip", marks=pytest.mark.slow)])
def test_one_device_with_dropout_equals_full_batch_gradient(name):
    params, batch, rng = init_mlp(), make_batch(), jax.random.key(7)
    loss, metrics, grads = gradcache_one_device(name)(params, batch, rng)
    ref_loss, ref_grads = plain_grads(name, params, batch, rng)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    assert set(metrics) == {"pos_sim", "neg_sim", "top1_acc"}
    assert_relative_error(grads, ref_grads)


@pytest.mark.parametrize("name", ["clip", pytest.param("nt_xent", marks=pytest.mark.slow)])
def test_eight_devices_inside_shard_map_equal_full_batch_gradient(name):
    params, batch = init_mlp(), make_batch(2)

    def step(p, b):
        loss, _, grads = grad_cache(
            encode_pair, functools.partial(pair_loss, name, axis_name="data"), p, b, num_chunks=2, axis_name="data"
        )
        return loss, grads

    sharded = jax.jit(
        jax.shard_map(step, mesh=data_mesh(), in_specs=(jax.P(), jax.P("data")), out_specs=(jax.P(), jax.P()))
    )
    loss, grads = sharded(params, batch)
    ref_loss, ref_grads = plain_grads(name, params, batch, None)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    assert_relative_error(grads, ref_grads)


@pytest.mark.parametrize("num_chunks", [3, 0])
def test_num_chunks_must_divide_the_batch(num_chunks):
    with pytest.raises(ValueError, match="num_chunks"):
        grad_cache(encode_pair, functools.partial(pair_loss, "clip"), init_mlp(), make_batch(), num_chunks=num_chunks)
