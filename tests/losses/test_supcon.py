"""Tests of contrastive.losses.supcon (Khosla et al. L_out)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contrastive.losses import nt_xent, supcon
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

V = 3
VG = value_and_grad(supcon, 1)


def np_supcon(z, labels, tau):
    """Float64 L_out (paper eq. 2): mean over anchors of -mean_{p in P(i)} log softmax_{a != i}."""
    n, v, _ = z.shape
    flat = np_normalize(z.reshape(n * v, -1))
    flat_labels = np.repeat(labels, v)
    others = ~np.eye(n * v, dtype=bool)
    positives = others & (flat_labels[:, None] == flat_labels[None, :])
    logits = np.where(others, flat @ flat.T / tau, -np.inf)
    log_prob = logits - np_logsumexp(logits)[:, None]
    num_pos = positives.sum(-1)
    per_anchor = -np.where(positives, log_prob, 0.0).sum(-1) / np.maximum(num_pos, 1)
    return np.mean(per_anchor)


def batch(seed, num_classes=4):
    labels = np.random.default_rng(seed).integers(0, num_classes, N).astype(np.int32)
    return random_embeddings(seed, N, V, D), labels


def test_matches_numpy_reference_value_and_gradient():
    z, labels = batch(0)
    (loss, metrics), (grad,) = VG(z, labels, temperature=0.3)
    np.testing.assert_allclose(loss, np_supcon(z, labels, 0.3), rtol=1e-5)
    ref = finite_difference_grad(lambda a: np_supcon(a, labels, 0.3), z)[0]
    np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-5)
    assert 0.0 <= metrics["top1_acc"] <= 1.0


def test_single_view_anchors_without_positives_contribute_zero():
    z = random_embeddings(1, 6, 1, 4)
    labels = np.array([0, 0, 1, 2, 3, 3], np.int32)
    loss, _ = jax.jit(lambda a, b: supcon(a, b, temperature=0.5))(z, labels)
    np.testing.assert_allclose(loss, np_supcon(z, labels, 0.5), rtol=1e-5)


def test_unique_labels_two_views_is_nt_xent():
    z1, z2 = random_embeddings(2, 6, 4), random_embeddings(3, 6, 4)
    sup = jax.jit(lambda a, b: supcon(jnp.stack([a, b], 1), jnp.arange(6), temperature=0.4)[0])
    simclr = jax.jit(lambda a, b: nt_xent(a, b, temperature=0.4)[0])
    np.testing.assert_allclose(sup(z1, z2), simclr(z1, z2), rtol=1e-6)


def test_gradient_wrt_similarity_is_softmax_minus_positive_share():
    """dl_i/dl_ia = softmax_a(l_i) - [a in P(i)] / |P(i)| (Khosla et al. eq. 16)."""
    tau = 0.5
    z, labels = random_embeddings(4, 5, 2, 3), np.array([0, 1, 0, 2, 1], np.int32)
    sim, self_mask, positive = multi_view_pairs(jnp.asarray(z), jnp.asarray(labels), None)
    negative = ~(self_mask | positive)
    loss = lambda s: jnp.mean(softmax_xent_rows(s, positive, negative, scale=1 / tau))
    grad = jax.jit(jax.grad(loss))(sim)
    logits = np.where(self_mask, -np.inf, np.asarray(sim, np.float64) / tau)
    softmax = np.exp(logits - np_logsumexp(logits)[:, None])
    share = np.asarray(positive) / np.asarray(positive).sum(-1, keepdims=True)
    np.testing.assert_allclose(grad, (softmax - share) / tau / len(sim), rtol=1e-4, atol=1e-7)


def test_eight_devices_equal_one_device():
    assert_distributed_equivalent(supcon, batch(5), 1, temperature=0.2)


def test_finite_at_logits_of_1e4():
    z, labels = batch(6)
    z = z[:, :1] + 1e-3 * z  # views nearly identical: positive logits near 1e4
    assert_finite(VG(z, labels, temperature=1e-4))


def test_bfloat16_inputs_give_float32_loss():
    assert_bfloat16_close(supcon, batch(7), 1, temperature=0.2)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), perm_seed=st.integers(0, 2**16))
def test_invariant_to_permuting_samples_views_and_renaming_labels(seed, perm_seed):
    z, labels = batch(seed)
    rng = np.random.default_rng(perm_seed)
    perm, view_perm, renaming = rng.permutation(N), rng.permutation(V), rng.permutation(4)
    base = VG(z, labels, temperature=0.3)[0][0]
    permuted = VG(z[perm][:, view_perm], renaming[labels[perm]].astype(np.int32), temperature=0.3)
    np.testing.assert_allclose(permuted[0][0], base, rtol=1e-5)


@pytest.mark.parametrize(
    "z_shape, labels, kwargs, match",
    [
        ((4, 2, 3), np.arange(3), {}, "labels must have shape"),
        ((4, 2, 3), np.zeros((4, 1), np.int32), {}, "labels must have shape"),
        ((4, 2, 3), np.zeros(4, np.float32), {}, "labels must be integers"),
        ((4, 3), np.arange(4), {}, "z must have rank 3"),
        ((4, 2, 3), np.arange(4), {"temperature": 0.0}, "temperature"),
    ],
)
def test_bad_arguments_raise(z_shape, labels, kwargs, match):
    kwargs = {"temperature": 0.5, **kwargs}
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda a, b: supcon(a, b, **kwargs)).trace(jnp.ones(z_shape), labels)
