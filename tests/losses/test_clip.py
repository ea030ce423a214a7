"""Tests of contrastive.losses.clip (CLIP / ALIGN symmetric InfoNCE)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contrastive.losses import clip
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

VG = value_and_grad(clip, 2)


def np_softmax(x):
    return np.exp(x - np_logsumexp(x)[:, None])


def np_clip(x, y, t):
    """Float64 CLIP: mean over N of both cross-entropies, averaged (plain dot products)."""
    logits = t * np.asarray(x, np.float64) @ np.asarray(y, np.float64).T
    i2t = np.mean(np_logsumexp(logits) - np.diag(logits))
    t2i = np.mean(np_logsumexp(logits.T) - np.diag(logits))
    return 0.5 * (i2t + t2i)


def pair(seed):
    return unit_rows(random_embeddings(seed, N, D)), unit_rows(random_embeddings(seed + 1, N, D))


def test_matches_numpy_reference_value_and_gradient():
    x, y = pair(0)
    x = 1.5 * x  # not normalised inside: any scale of the inputs must be used as given
    (loss, metrics), grads = VG(x, y, logit_scale=3.0)
    np.testing.assert_allclose(loss, np_clip(x, y, 3.0), rtol=1e-5)
    for g, r in zip(grads, finite_difference_grad(lambda a, b: np_clip(a, b, 3.0), x, y)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
    sim = np.asarray(x, np.float64) @ np.asarray(y, np.float64).T
    np.testing.assert_allclose(metrics["pos_sim"], np.mean(np.diag(sim)), rtol=1e-5)
    np.testing.assert_allclose(metrics["neg_sim"], sim[~np.eye(N, dtype=bool)].mean(), atol=1e-6)
    np.testing.assert_allclose(metrics["top1_acc"], np.mean(np.argmax(sim, 1) == np.arange(N)))


def test_gradient_is_softmax_weight_times_scale():
    """dL/dl_ij = (softmax_row_ij + softmax_col_ij - 2 [i=j]) / 2N, and dl_ij/dx_i = t y_j."""
    x, y = pair(2)
    t = 5.0
    _, (grad_x, grad_y) = VG(x, y, logit_scale=t)
    logits = t * np.asarray(x, np.float64) @ np.asarray(y, np.float64).T
    d_logits = (np_softmax(logits) + np_softmax(logits.T).T - 2 * np.eye(N)) / (2 * N)
    np.testing.assert_allclose(grad_x, t * d_logits @ y, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_y, t * d_logits.T @ x, rtol=1e-4, atol=1e-6)


def test_eight_devices_equal_one_device():
    assert_distributed_equivalent(clip, pair(4), 2, logit_scale=10.0)


def test_eight_devices_equal_one_device_with_hardest_negatives_across_devices():
    static = {"hardest_negatives": 5, "additive_margin": 0.1}
    assert_distributed_equivalent(clip, pair(5), 2, static=static, logit_scale=10.0)


def test_finite_at_logits_of_1e4():
    x, y = pair(6)
    assert_finite(VG(x, y, logit_scale=1e4))


def test_bfloat16_inputs_give_float32_loss():
    assert_bfloat16_close(clip, pair(7), 2, logit_scale=10.0)


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
        (((4, 3), (4, 2)), {}, "image and text must have the same shape"),
        (((4,), (4,)), {}, "image must have rank 2"),
        (((4, 3), (4, 3)), {"logit_scale": 0.0}, "logit_scale"),
        (((4, 3), (4, 3)), {"logit_scale": -2.0}, "logit_scale"),
        (((4, 3), (4, 3)), {"angular_margin": 4.0}, "angular_margin"),
    ],
)
def test_bad_arguments_raise(shapes, kwargs, match):
    kwargs = {"logit_scale": 10.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda a, b: clip(a, b, **kwargs)).trace(*(jnp.ones(s) for s in shapes))


@pytest.mark.parametrize("impl", ["gather", "ring"])  # with a chunk: tiled, ring
def test_traces_past_int32_pair_counts(impl):
    """At B = 65,536 there are B (B - 1) > 2**31 negative pairs: the metrics' counts must not overflow."""
    rows = jax.ShapeDtypeStruct((65536, 4), jnp.float32)
    value, metrics = jax.eval_shape(lambda x, y: clip(x, y, logit_scale=10.0, impl=impl, chunk_size=128), rows, rows)
    assert value.shape == () and metrics["neg_sim"].dtype == jnp.float32
