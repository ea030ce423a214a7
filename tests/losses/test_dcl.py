"""Tests of contrastive.losses.dcl (DCL and DCLW)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contrastive.losses import dcl
from contrastive.losses.core import softmax_xent_rows
from contrastive.losses.dcl import dclw_weight
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

DCL = value_and_grad(dcl, 2)
DCLW = value_and_grad(dcl, 2, weighted=True)


def np_positive_cosine(z1, z2):
    return np.sum(np_normalize(z1) * np_normalize(z2), axis=-1)


def np_dclw_weight(z1, z2, sigma):
    vmf = np.exp(np_positive_cosine(z1, z2) / sigma)
    return np.tile(2.0 - vmf / vmf.mean(), 2)


def np_dcl(z1, z2, tau, weight=None):
    """Float64 DCL: -w_a s_a,p(a)/tau + log sum_{b != a, p(a)} exp(s_ab/tau), mean over 2N."""
    n = len(z1)
    z = np_normalize(np.concatenate([z1, z2]))
    logits = z @ z.T / tau
    positive = (np.arange(2 * n) + n) % (2 * n)
    pos = logits[np.arange(2 * n), positive].copy()
    np.fill_diagonal(logits, -np.inf)
    logits[np.arange(2 * n), positive] = -np.inf
    weight = np.ones(2 * n) if weight is None else weight
    return np.mean(np_logsumexp(logits) - weight * pos)


def pair(seed):
    return random_embeddings(seed, N, D), random_embeddings(seed + 1, N, D)


def test_dcl_matches_numpy_reference_value_and_gradient():
    z1, z2 = pair(0)
    (loss, _), grads = DCL(z1, z2, temperature=0.2)
    np.testing.assert_allclose(loss, np_dcl(z1, z2, 0.2), rtol=1e-5)
    for g, r in zip(grads, finite_difference_grad(lambda a, b: np_dcl(a, b, 0.2), z1, z2)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


def test_dclw_weight_is_a_constant_in_the_gradient():
    """The value uses w(z); the gradient treats w as a constant (finite differences at fixed w)."""
    z1, z2 = pair(1)
    weight = np_dclw_weight(z1, z2, 0.5)
    (loss, _), grads = DCLW(z1, z2, temperature=0.2, sigma=0.5)
    np.testing.assert_allclose(loss, np_dcl(z1, z2, 0.2, weight), rtol=1e-5)
    ref = finite_difference_grad(lambda a, b: np_dcl(a, b, 0.2, weight), z1, z2)
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        jax.grad(lambda s: jnp.sum(dclw_weight(s, 0.5, None) ** 2))(jnp.ones(4)), 0.0
    )


@pytest.mark.parametrize("weighted", [False, True])
def test_no_negative_positive_coupling(weighted):
    """dL/ds_pos = -w / (2N tau) whatever the negatives; negatives get softmax over negatives only."""
    tau, n = 0.3, 5
    z1, z2 = random_embeddings(2, n, 4), random_embeddings(3, n, 4)
    sim, self_mask, positive = multi_view_pairs(jnp.stack([z1, z2], 1), None, None)
    negative = ~(self_mask | positive)
    weight = dclw_weight(jnp.sum(jnp.where(positive, sim, 0), -1), 0.5, None) if weighted else None

    def loss(s):
        rows = softmax_xent_rows(
            s, positive, negative, scale=1 / tau, positives_in_denominator=False, positive_weight=weight
        )
        return jnp.mean(rows)

    grad = np.asarray(jax.jit(jax.grad(loss))(sim))
    w = np.ones(2 * n) if weight is None else np.asarray(weight)
    np.testing.assert_allclose(grad[np.asarray(positive)], -w / (2 * n * tau), rtol=1e-5)
    logits = np.where(negative, np.asarray(sim, np.float64) / tau, -np.inf)
    softmax = np.exp(logits - np_logsumexp(logits)[:, None])
    np.testing.assert_allclose(
        grad[np.asarray(negative)], (softmax / tau / (2 * n))[np.asarray(negative)], rtol=1e-4
    )


@pytest.mark.parametrize("weighted", [False, True])
def test_eight_devices_equal_one_device(weighted):
    assert_distributed_equivalent(
        dcl, pair(4), 2, static={"weighted": weighted}, temperature=0.2, sigma=0.5
    )


def test_finite_at_logits_of_1e4():
    z1, z2 = pair(5)
    assert_finite(DCLW(z1, z1 + 1e-3 * z2, temperature=1e-4, sigma=0.5))


def test_bfloat16_inputs_give_float32_loss():
    assert_bfloat16_close(dcl, pair(6), 2, temperature=0.2)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), perm_seed=st.integers(0, 2**16))
def test_permuting_pairs_and_swapping_views_leaves_loss_unchanged(seed, perm_seed):
    z1, z2 = pair(seed)
    perm = np.random.default_rng(perm_seed).permutation(N)
    base = DCLW(z1, z2, temperature=0.3, sigma=0.5)[0][0]
    np.testing.assert_allclose(DCLW(z1[perm], z2[perm], temperature=0.3, sigma=0.5)[0][0], base, rtol=1e-5)
    np.testing.assert_allclose(DCLW(z2, z1, temperature=0.3, sigma=0.5)[0][0], base, rtol=1e-5)


@pytest.mark.parametrize(
    "shapes, kwargs, match",
    [
        (((4, 3), (4, 2)), {}, "z1 and z2 must have the same shape"),
        (((4,), (4,)), {}, "z1 must have rank 2"),
        (((4, 3), (4, 3)), {"temperature": 0.0}, "temperature"),
        (((4, 3), (4, 3)), {"weighted": True, "sigma": 0.0}, "sigma"),
    ],
)
def test_bad_arguments_raise(shapes, kwargs, match):
    kwargs = {"temperature": 0.5, **kwargs}
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda a, b: dcl(a, b, **kwargs)).trace(*(jnp.ones(s) for s in shapes))
