"""Tests of contrastive.losses.siglip (pairwise sigmoid loss on the ring and gather paths)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contrastive.losses import siglip
from contrastive.losses.siglip import fused_siglip, sigmoid_pair_losses
from tests.losses.helpers import (
    D,
    N,
    assert_bfloat16_close,
    assert_distributed_equivalent,
    assert_finite,
    assert_trees_close,
    finite_difference_grad,
    random_embeddings,
    unit_rows,
    value_and_grad,
)


def siglip_positional(image, text, logit_scale, logit_bias, **kwargs):
    """siglip with the scale and bias as positional (differentiated, replicated) arguments."""
    return siglip(image, text, logit_scale=logit_scale, logit_bias=logit_bias, **kwargs)


RING = value_and_grad(siglip_positional, 4, impl="ring")
GATHER = value_and_grad(siglip_positional, 4, impl="gather")
FUSED = value_and_grad(siglip_positional, 4, impl="gather", chunk_size=N // 4)  # one device, tiled: fused


def np_siglip(x, y, t, b):
    """Float64 SigLIP: -sum_ij log sigmoid(z_ij (t <x_i, y_j> + b)) / N."""
    logits = t * np.asarray(x, np.float64) @ np.asarray(y, np.float64).T + b
    z = 2 * np.eye(len(x)) - 1
    return np.sum(np.logaddexp(0.0, -z * logits)) / len(x)


def pair(seed):
    return unit_rows(random_embeddings(seed, N, D)), unit_rows(random_embeddings(seed + 1, N, D))


@pytest.mark.parametrize("vg", [RING, GATHER, FUSED], ids=["ring", "gather", "fused_tiled"])
def test_matches_numpy_reference_value_and_gradient(vg):
    x, y = pair(0)
    x = 1.5 * x  # not normalised inside
    t, b = np.float32(5.0), np.float32(-2.0)
    (loss, metrics), grads = vg(x, y, t, b)
    np.testing.assert_allclose(loss, np_siglip(x, y, t, b), rtol=1e-5)
    for g, r in zip(grads, finite_difference_grad(np_siglip, x, y, t, b)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)
    sim = np.asarray(x, np.float64) @ np.asarray(y, np.float64).T
    np.testing.assert_allclose(metrics["pos_sim"], np.mean(np.diag(sim)), rtol=1e-5)
    np.testing.assert_allclose(metrics["neg_sim"], sim[~np.eye(N, dtype=bool)].mean(), atol=1e-6)
    np.testing.assert_allclose(metrics["top1_acc"], np.mean(np.argmax(sim, 1) == np.arange(N)))


def test_pairs_are_independent():
    """The Hessian in the pair logits is diagonal, and dL/dl_ij = -z_ij sigmoid(-z_ij l_ij) / N."""
    n = 4
    sim = jnp.asarray(random_embeddings(1, n, n))
    positive = jnp.eye(n, dtype=bool)
    block = lambda s: jnp.sum(sigmoid_pair_losses(s, positive, 1.0, 0.0)) / n
    hessian = np.asarray(jax.jit(jax.hessian(block))(sim)).reshape(n * n, n * n)
    np.testing.assert_allclose(hessian - np.diag(np.diag(hessian)), 0.0, atol=1e-7)
    z = 2 * np.eye(n) - 1
    expected = -z / (1 + np.exp(z * np.asarray(sim, np.float64))) / n
    np.testing.assert_allclose(jax.grad(block)(sim), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("vg", [RING, FUSED], ids=["ring", "fused_tiled"])
def test_embedding_gradient_is_sum_of_independent_pair_terms(vg):
    x, y = pair(2)
    t, b = np.float32(10.0), np.float32(-3.0)
    _, (grad_x, grad_y, grad_t, grad_b) = vg(x, y, t, b)
    sim = np.asarray(x, np.float64) @ np.asarray(y, np.float64).T
    z = 2 * np.eye(N) - 1
    d_logits = -z / (1 + np.exp(z * (t * sim + b))) / N
    np.testing.assert_allclose(grad_x, t * d_logits @ y, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_y, t * d_logits.T @ x, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_t, np.sum(d_logits * sim), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_b, np.sum(d_logits), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", ["ring", "gather"])
def test_eight_devices_equal_one_device(impl):
    x, y = pair(3)
    args = (x, y, np.float32(10.0), np.float32(-5.0))
    assert_distributed_equivalent(siglip_positional, args, 4, static={"impl": impl})


def test_ring_equals_all_gather_on_eight_devices():
    x, y = pair(4)
    args = (x, y, np.float32(7.0), np.float32(-4.0))
    ring = value_and_grad(siglip_positional, 4, distributed=True, impl="ring")(*args)
    gather = value_and_grad(siglip_positional, 4, distributed=True, impl="gather")(*args)
    assert_trees_close(ring, gather)


def test_ring_never_gathers():
    x, y = pair(5)
    f = jax.shard_map(
        lambda a, b: siglip(a, b, logit_scale=10.0, logit_bias=-10.0, axis_name="data", impl="ring"),
        mesh=jax.sharding.Mesh(np.array(jax.devices()), ("data",)),
        in_specs=jax.P("data"),
        out_specs=jax.P(),
    )
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda a, b: f(a, b)[0], argnums=(0, 1)))(x, y))
    assert "ppermute" in jaxpr
    assert "all_gather" not in jaxpr


def test_finite_at_logits_of_1e4():
    x, y = pair(6)
    assert_finite(RING(x, y, np.float32(1e4), np.float32(-10.0)))


def test_bfloat16_inputs_give_float32_loss():
    x, y = pair(7)
    assert_bfloat16_close(siglip_positional, (x, y, np.float32(10.0), np.float32(-10.0)), 2)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), perm_seed=st.integers(0, 2**16))
def test_symmetric_and_invariant_to_permuting_pairs(seed, perm_seed):
    x, y = pair(seed)
    perm = np.random.default_rng(perm_seed).permutation(N)
    t, b = np.float32(10.0), np.float32(-5.0)
    base = RING(x, y, t, b)[0][0]
    np.testing.assert_allclose(RING(y, x, t, b)[0][0], base, rtol=1e-5)
    np.testing.assert_allclose(RING(x[perm], y[perm], t, b)[0][0], base, rtol=1e-5)


@pytest.mark.parametrize(
    "shapes, kwargs, match",
    [
        (((4, 3), (5, 3)), {}, "image and text must have the same shape"),
        (((4, 3, 1), (4, 3, 1)), {}, "image must have rank 2"),
        (((4, 3), (4, 3)), {"logit_scale": 0.0}, "logit_scale"),
        (((4, 3), (4, 3)), {"logit_bias": np.zeros(2)}, "logit_bias"),
        (((4, 3), (4, 3)), {"impl": "all_gather"}, "impl"),
    ],
)
def test_bad_arguments_raise(shapes, kwargs, match):
    kwargs = {"logit_scale": 10.0, "logit_bias": -10.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda a, b: siglip(a, b, **kwargs)).trace(*(jnp.ones(s) for s in shapes))


def _dot_count(fn, x, y):
    return str(jax.make_jaxpr(jax.value_and_grad(fn, argnums=(0, 1)))(x, y)).count("dot_general")


def test_fused_tiled_path_takes_three_matmuls_per_tile_and_equals_the_two_pass_path():
    """One device, tiled, mean: the gradient comes from the loss's own pass (3 matmuls: logits, dX, dY);
    the per-row output (reduction='none') takes the streamed two-pass path (which recomputes the logits)."""
    x, y = pair(8)
    fused = lambda a, b: siglip(a, b, logit_scale=10.0, logit_bias=-5.0, chunk_size=N // 4)[0]
    rows = lambda a, b: jnp.mean(
        siglip(a, b, logit_scale=10.0, logit_bias=-5.0, chunk_size=N // 4, reduction="none")[0]["loss"])
    alone = lambda a, b: fused_siglip(a, b, jnp.float32(10.0), jnp.float32(-5.0), N // 4)[0]
    assert _dot_count(alone, x, y) == 3 and _dot_count(fused, x, y) < _dot_count(rows, x, y)
    for a, b in zip(jax.value_and_grad(fused, argnums=(0, 1))(x, y), jax.value_and_grad(rows, argnums=(0, 1))(x, y),
                    strict=True):
        assert_trees_close(a, b)
    assert_finite(FUSED(x, y, np.float32(1e4), np.float32(-10.0)))
    assert_bfloat16_close(lambda a, b, t, c: siglip_positional(a, b, t, c, impl="gather", chunk_size=N // 4),
                          (x, y, np.float32(10.0), np.float32(-10.0)), 2)


def _on_ring(**kwargs):
    return jax.shard_map(
        lambda a, b: siglip(a, b, logit_scale=10.0, logit_bias=-5.0, axis_name="data", impl="ring", **kwargs)[0],
        mesh=jax.sharding.Mesh(np.array(jax.devices()), ("data",)), in_specs=jax.P("data"), out_specs=jax.P(),
        check_vma=True)


def test_fused_ring_takes_three_matmuls_per_block_and_equals_the_two_pass_ring():
    """8 devices, ring, mean: the text blocks travel with their gradients (3 matmuls per block, the own
    block's and the loop body's: 6 in the program); reduction='none' takes the two-pass ring, whose backward
    recomputes the logits. Same value and gradients, and the dense numpy reference."""
    x, y = pair(9)
    fused = _on_ring()
    two_pass = jax.shard_map(
        lambda a, b: jax.lax.pmean(jnp.mean(siglip(a, b, logit_scale=10.0, logit_bias=-5.0, axis_name="data",
                                                   impl="ring", reduction="none")[0]["loss"]), "data"),
        mesh=jax.sharding.Mesh(np.array(jax.devices()), ("data",)), in_specs=jax.P("data"), out_specs=jax.P())
    alone = jax.shard_map(lambda a, b: fused_siglip(a, b, jnp.float32(10.0), jnp.float32(-5.0), N // 8, "data")[0],
                          mesh=jax.sharding.Mesh(np.array(jax.devices()), ("data",)), in_specs=jax.P("data"),
                          out_specs=jax.P())
    assert _dot_count(alone, x, y) == 6 and _dot_count(fused, x, y) < _dot_count(two_pass, x, y)
    got, want = jax.value_and_grad(fused, argnums=(0, 1))(x, y), jax.value_and_grad(two_pass, argnums=(0, 1))(x, y)
    assert_trees_close(got, want)
    np.testing.assert_allclose(got[0], np_siglip(x, y, 10.0, -5.0), rtol=1e-5)
