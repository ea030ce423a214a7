"""Tests of contrastive.losses.bootstrap (BYOL and SimSiam)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contrastive.losses.bootstrap import byol, output_std, simsiam
from tests.losses.helpers import (
    D,
    N,
    assert_bfloat16_close,
    assert_distributed_equivalent,
    assert_finite,
    finite_difference_grad,
    np_normalize,
    random_embeddings,
    value_and_grad,
)

BYOL = value_and_grad(byol, 4)
SIMSIAM = value_and_grad(simsiam, 4)
SIMSIAM_NO_SG = value_and_grad(simsiam, 4, stop_gradient=False)


def np_cos(a, b):
    return np.sum(np_normalize(a) * np_normalize(b), axis=-1)


def np_byol(p1, p2, t1, t2):
    return np.mean((2 - 2 * np_cos(p1, t2)) + (2 - 2 * np_cos(p2, t1)))


def np_simsiam(p1, p2, z1, z2):
    return np.mean(-0.5 * np_cos(p1, z2) - 0.5 * np_cos(p2, z1))


def np_output_std(*targets):
    u = np_normalize(np.concatenate(targets))
    return np.mean(np.std(u, axis=0))


def views(seed, n=N, d=D):
    return tuple(random_embeddings(seed + k, n, d) for k in range(4))


def test_byol_matches_numpy_value_metrics_and_gradient():
    p1, p2, t1, t2 = views(0)
    (loss, metrics), grads = BYOL(p1, p2, t1, t2)
    np.testing.assert_allclose(loss, np_byol(p1, p2, t1, t2), rtol=1e-5)
    np.testing.assert_allclose(metrics["cos_sim"], np.mean([np_cos(p1, t2), np_cos(p2, t1)]), rtol=1e-5)
    np.testing.assert_allclose(metrics["output_std"], np_output_std(t1, t2), rtol=1e-5)
    ref = finite_difference_grad(lambda a, b: np_byol(a, b, t1, t2), p1, p2)
    for g, r in zip(grads[:2], ref):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)
    for g in grads[2:]:  # the EMA target receives no gradient
        np.testing.assert_array_equal(g, 0.0)


def test_simsiam_matches_numpy_and_stops_the_target_gradient():
    p1, p2, z1, z2 = views(10)
    (loss, metrics), grads = SIMSIAM(p1, p2, z1, z2)
    np.testing.assert_allclose(loss, np_simsiam(p1, p2, z1, z2), rtol=1e-5)
    np.testing.assert_allclose(metrics["output_std"], np_output_std(z1, z2), rtol=1e-5)
    ref = finite_difference_grad(lambda a, b: np_simsiam(a, b, z1, z2), p1, p2)
    for g, r in zip(grads[:2], ref):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)
    for g in grads[2:]:
        np.testing.assert_array_equal(g, 0.0)


def test_simsiam_without_stop_gradient_differentiates_the_targets():
    """The collapse ablation: same value, and the gradient is that of the full function of all four."""
    args = views(20)
    (loss, _), grads = SIMSIAM_NO_SG(*args)
    np.testing.assert_allclose(loss, SIMSIAM(*args)[0][0], rtol=1e-6)
    for g, r in zip(grads, finite_difference_grad(np_simsiam, *args)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)
    assert np.abs(grads[2]).max() > 1e-3


def test_losses_are_affine_in_the_same_mean_cosine():
    args = views(30)
    (byol_loss, byol_metrics), _ = BYOL(*args)
    (simsiam_loss, simsiam_metrics), _ = SIMSIAM(*args)
    np.testing.assert_allclose(byol_loss, 4.0 + 4.0 * simsiam_loss, rtol=1e-5)
    np.testing.assert_allclose(byol_metrics["cos_sim"], -simsiam_loss, rtol=1e-5)
    assert byol_metrics.keys() == simsiam_metrics.keys() == {"cos_sim", "output_std"}


def test_perfect_prediction_and_collapse():
    """p = t gives BYOL 0 / SimSiam -1; a constant target has output_std 0; opposite gives BYOL 8."""
    _, _, t1, t2 = views(40)
    (loss, metrics), _ = BYOL(t2, t1, t1, t2)
    np.testing.assert_allclose(loss, 0.0, atol=1e-5)
    np.testing.assert_allclose(metrics["cos_sim"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(BYOL(-t2, -t1, t1, t2)[0][0], 8.0, rtol=1e-6)
    np.testing.assert_allclose(SIMSIAM(t2, t1, t1, t2)[0][0], -1.0, rtol=1e-6)
    constant = np.tile(t1[:1], (N, 1))
    np.testing.assert_allclose(BYOL(t1, t2, 3 * constant, constant)[0][1]["output_std"], 0.0, atol=1e-6)


def test_output_std_of_spread_outputs_is_about_one_over_sqrt_dim():
    z = random_embeddings(41, 4096, 64)
    np.testing.assert_allclose(output_std(z), 1 / np.sqrt(64), rtol=0.03)


@pytest.mark.parametrize(
    "loss_fn, static", [(byol, {}), (simsiam, {}), (simsiam, {"stop_gradient": False})]
)
def test_eight_devices_equal_one_device(loss_fn, static):
    assert_distributed_equivalent(loss_fn, views(50), 4, static=static)


def test_zero_vectors_give_finite_values_and_gradients():
    p1, p2, t1, t2 = views(60)
    p1[:3] = 0.0
    t1[2:5] = 0.0
    assert_finite(BYOL(p1, p2, t1, t2))
    assert_finite(SIMSIAM_NO_SG(p1, p2, t1, t2))


@pytest.mark.parametrize("scale", [1e-10, 1e15])
def test_tiny_and_huge_embeddings_give_the_unit_scale_value(scale):
    args = views(70)
    (loss, metrics), grads = BYOL(*(scale * a for a in args))
    np.testing.assert_allclose(loss, BYOL(*args)[0][0], rtol=1e-5)
    assert_finite(((loss, metrics), grads))


@pytest.mark.parametrize("loss_fn", [byol, simsiam])
def test_bfloat16_inputs_give_float32_loss(loss_fn):
    assert_bfloat16_close(loss_fn, views(80), 4, atol=2e-2)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), perm_seed=st.integers(0, 2**16))
def test_permuting_pairs_and_swapping_views_leaves_loss_unchanged(seed, perm_seed):
    p1, p2, t1, t2 = views(seed)
    perm = np.random.default_rng(perm_seed).permutation(N)
    (base, metrics), _ = BYOL(p1, p2, t1, t2)
    (permuted, permuted_metrics), _ = BYOL(p1[perm], p2[perm], t1[perm], t2[perm])
    np.testing.assert_allclose(permuted, base, rtol=1e-5)
    np.testing.assert_allclose(permuted_metrics["output_std"], metrics["output_std"], rtol=1e-5)
    np.testing.assert_allclose(BYOL(p2, p1, t2, t1)[0][0], base, rtol=1e-5)


@pytest.mark.parametrize(
    "shapes, match",
    [
        (((4, 3), (4, 3), (4, 3), (4, 2)), "t1 and t2 must have the same shape"),
        (((4, 3), (5, 3), (4, 3), (4, 3)), "p1 and p2 must have the same shape"),
        (((4, 3), (4, 3), (4, 2), (4, 2)), "p1 and t1 must have the same shape"),
        (((4,), (4,), (4,), (4,)), "p1 must have rank 2"),
    ],
)
@pytest.mark.parametrize("loss_fn", [byol, simsiam])
def test_bad_arguments_raise(loss_fn, shapes, match):
    with pytest.raises(ValueError, match=match):
        jax.jit(loss_fn).trace(*(jnp.ones(s) for s in shapes))
