"""Tests of contrastive.losses.nt_xent (SimCLR NT-Xent)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contrastive.losses import nt_xent
from contrastive.losses.core import softmax_xent_rows
from tests.losses.helpers import (
    D,
    N,
    assert_bfloat16_close,
    assert_distributed_equivalent,
    assert_finite,
    finite_difference_grad,
    multi_view_pairs,
    np_logsumexp,
    np_normalize,
    random_embeddings,
    value_and_grad,
)

VG = value_and_grad(nt_xent, 2)


def np_nt_xent(z1, z2, tau):
    """Float64 SimCLR eq. (1), mean over the 2N anchors."""
    n = len(z1)
    z = np_normalize(np.concatenate([z1, z2]))
    logits = z @ z.T / tau
    np.fill_diagonal(logits, -np.inf)
    positive = (np.arange(2 * n) + n) % (2 * n)
    return np.mean(np_logsumexp(logits) - logits[np.arange(2 * n), positive])


def pair(seed):
    return random_embeddings(seed, N, D), random_embeddings(seed + 1, N, D)


@pytest.mark.parametrize("tau", [0.1, 2.0])
def test_matches_numpy_reference_value_and_gradient(tau):
    z1, z2 = pair(0)
    (loss, _), grads = VG(z1, z2, temperature=tau)
    np.testing.assert_allclose(loss, np_nt_xent(z1, z2, tau), rtol=1e-5)
    ref = finite_difference_grad(lambda a, b: np_nt_xent(a, b, tau), z1, z2)
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


def test_metrics():
    z1, _ = pair(2)
    (loss, metrics), _ = VG(z1, z1, temperature=0.5)
    assert set(metrics) >= {"pos_sim", "neg_sim", "top1_acc"}
    np.testing.assert_allclose(metrics["pos_sim"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(metrics["top1_acc"], 1.0)
    z = np_normalize(np.concatenate([z1, z1]))
    negative = ~np.eye(2 * N, dtype=bool) & ~np.roll(np.eye(2 * N, dtype=bool), N, axis=1)
    np.testing.assert_allclose(metrics["neg_sim"], (z @ z.T)[negative].mean(), atol=1e-6)
    assert all(v.dtype == jnp.float32 and v.shape == () for v in [loss, *metrics.values()])


def test_gradient_wrt_negative_similarity_is_softmax_weight_over_temperature():
    """Wang & Liu 2021: dL/ds_ik = softmax_k(s_i / tau) / tau (times 1/2N for the mean)."""
    tau, n = 0.2, 5
    z = np.stack([random_embeddings(3, n, 4), random_embeddings(4, n, 4)], axis=1)
    sim, self_mask, positive = multi_view_pairs(jnp.asarray(z), None, None)
    negative = ~(self_mask | positive)
    loss = lambda s: jnp.mean(softmax_xent_rows(s, positive, negative, scale=1 / tau))
    grad = jax.jit(jax.grad(loss))(sim)
    logits = np.where(self_mask, -np.inf, np.asarray(sim, np.float64) / tau)
    softmax = np.exp(logits - np_logsumexp(logits)[:, None])
    expected = np.where(positive, softmax - 1.0, softmax) / tau / (2 * n)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)


def test_eight_devices_equal_one_device():
    assert_distributed_equivalent(nt_xent, pair(5), 2, temperature=0.2)


def test_finite_at_logits_of_1e4():
    z1, z2 = pair(7)
    assert_finite(VG(z1, z1 + 1e-3 * z2, temperature=1e-4))


def test_bfloat16_inputs_give_float32_loss():
    assert_bfloat16_close(nt_xent, pair(9), 2, temperature=0.3)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), perm_seed=st.integers(0, 2**16))
def test_permuting_pairs_and_swapping_views_leaves_loss_unchanged(seed, perm_seed):
    z1, z2 = pair(seed)
    perm = np.random.default_rng(perm_seed).permutation(N)
    base = VG(z1, z2, temperature=0.3)[0][0]
    np.testing.assert_allclose(VG(z1[perm], z2[perm], temperature=0.3)[0][0], base, rtol=1e-5)
    np.testing.assert_allclose(VG(z2, z1, temperature=0.3)[0][0], base, rtol=1e-5)


@pytest.mark.parametrize(
    "z1_shape, z2_shape, kwargs, match",
    [
        ((4, 3), (5, 3), {}, "z1 and z2 must have the same shape"),
        ((4, 3, 2), (4, 3, 2), {}, "z1 must have rank 2"),
        ((4, 3), (4, 3), {"temperature": 0.0}, "temperature"),
        ((4, 3), (4, 3), {"temperature": -1.0}, "temperature"),
        ((4, 3), (4, 3), {"hardest_negatives": 0}, "hardest_negatives"),
        ((4, 3), (4, 3), {"false_negative_prior": 1.0}, "false_negative_prior"),
    ],
)
def test_bad_arguments_raise(z1_shape, z2_shape, kwargs, match):
    kwargs = {"temperature": 0.5, **kwargs}
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda a, b: nt_xent(a, b, **kwargs)).trace(jnp.ones(z1_shape), jnp.ones(z2_shape))
