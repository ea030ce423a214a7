"""Tests of contrastive.losses.infoloob (CLOOB's InfoLOOB, symmetric, no Hopfield)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contrastive.losses import infoloob
from tests.losses.helpers import (
    D,
    N,
    assert_bfloat16_close,
    assert_distributed_equivalent,
    assert_finite,
    finite_difference_grad,
    np_logsumexp,
    random_embeddings,
    unit_rows,
    value_and_grad,
)

VG = value_and_grad(infoloob, 2)
OFF_DIAGONAL = ~np.eye(N, dtype=bool)


def np_leave_one_out_softmax(logits):
    masked = np.where(OFF_DIAGONAL, logits, -np.inf)
    return np.exp(masked - np_logsumexp(masked)[:, None])


def np_infoloob(x, y, t):
    """Float64 InfoLOOB: -log(exp(l_ii) / sum_{j != i} exp(l_ij)), mean over N, both directions."""
    logits = t * np.asarray(x, np.float64) @ np.asarray(y, np.float64).T
    masked = np.where(OFF_DIAGONAL, logits, -np.inf)
    i2t = np.mean(np_logsumexp(masked) - np.diag(logits))
    t2i = np.mean(np_logsumexp(masked.T) - np.diag(logits))
    return 0.5 * (i2t + t2i)


def pair(seed):
    return unit_rows(random_embeddings(seed, N, D)), unit_rows(random_embeddings(seed + 1, N, D))


def test_matches_numpy_reference_value_and_gradient():
    x, y = pair(0)
    (loss, _), grads = VG(1.5 * x, y, logit_scale=4.0)
    np.testing.assert_allclose(loss, np_infoloob(1.5 * x, y, 4.0), rtol=1e-5)
    for g, r in zip(grads, finite_difference_grad(lambda a, b: np_infoloob(a, b, 4.0), 1.5 * x, y)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


def test_positive_gradient_is_uncoupled_from_negatives():
    """dL/dl_ii = -1/N exactly; dL/dl_ij = (loo-softmax_row + loo-softmax_col) / 2N."""
    x, y = pair(1)
    t = 8.0
    _, (grad_x, grad_y) = VG(x, y, logit_scale=t)
    logits = t * np.asarray(x, np.float64) @ np.asarray(y, np.float64).T
    d_logits = (np_leave_one_out_softmax(logits) + np_leave_one_out_softmax(logits.T).T) / (2 * N)
    d_logits -= np.eye(N) / N
    np.testing.assert_allclose(grad_x, t * d_logits @ y, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_y, t * d_logits.T @ x, rtol=1e-4, atol=1e-6)


def test_eight_devices_equal_one_device():
    assert_distributed_equivalent(infoloob, pair(2), 2, logit_scale=10.0)


def test_finite_at_logits_of_1e4():
    x, y = pair(3)
    assert_finite(VG(x, y, logit_scale=1e4))


def test_bfloat16_inputs_give_float32_loss():
    assert_bfloat16_close(infoloob, pair(4), 2, logit_scale=10.0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), perm_seed=st.integers(0, 2**16))
def test_symmetric_and_invariant_to_permuting_pairs(seed, perm_seed):
    x, y = pair(seed)
    perm = np.random.default_rng(perm_seed).permutation(N)
    base = VG(x, y, logit_scale=4.0)[0][0]
    np.testing.assert_allclose(VG(y, x, logit_scale=4.0)[0][0], base, rtol=1e-5)
    np.testing.assert_allclose(VG(x[perm], y[perm], logit_scale=4.0)[0][0], base, rtol=1e-5)


@pytest.mark.parametrize(
    "shapes, kwargs, match",
    [
        (((4, 3), (3, 3)), {}, "image and text must have the same shape"),
        (((4, 3, 1), (4, 3, 1)), {}, "image must have rank 2"),
        (((4, 3), (4, 3)), {"logit_scale": 0.0}, "logit_scale"),
    ],
)
def test_bad_arguments_raise(shapes, kwargs, match):
    kwargs = {"logit_scale": 10.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda a, b: infoloob(a, b, **kwargs)).trace(*(jnp.ones(s) for s in shapes))
