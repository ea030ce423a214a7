"""Tests of contrastive.losses.core: the shared softmax core and its variants (via nt_xent / clip)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive.losses import Variants, nt_xent, softmax_xent_rows
from tests.losses.helpers import (
    D,
    N,
    assert_distributed_equivalent,
    assert_finite,
    finite_difference_grad,
    np_logsumexp,
    np_normalize,
    random_embeddings,
    value_and_grad,
)

TAU = 0.5


def np_variant_nt_xent(z1, z2, tau, variants, frozen=None):
    """Float64 NT-Xent with the variants, written as in the papers' reference code.

    ``frozen`` holds the similarities the LLaVE weights are computed from (a stop-gradient copy).
    """
    n = len(z1)
    z = np_normalize(np.concatenate([z1, z2]))
    sim = z @ z.T
    frozen = sim if frozen is None else frozen
    anchors, positive = np.arange(2 * n), (np.arange(2 * n) + n) % (2 * n)
    s_pos = sim[anchors, positive]
    if variants.angular_margin:
        s_pos = np.cos(np.minimum(np.arccos(s_pos) + variants.angular_margin, np.pi))
    pos = np.exp((s_pos - variants.additive_margin) / tau)
    negative = ~np.eye(2 * n, dtype=bool)
    negative[anchors, positive] = False
    neg = np.exp(sim / tau) * np.exp(variants.hardness_weight * frozen)  # LLaVE weights
    if variants.hardest_negatives is not None:
        order = np.argsort(-np.where(negative, np.log(neg), -np.inf), axis=1)
        keep = np.zeros_like(negative)
        np.put_along_axis(keep, order[:, : variants.hardest_negatives], True, axis=1)
        negative &= keep
    count = negative.sum(1)
    if variants.hardness_concentration:  # Robinson et al.: imp = exp(beta * logit)
        imp = np.exp(variants.hardness_concentration * sim / tau)
        mean_imp = np.where(negative, imp, 0).sum(1) / count
        mass = np.where(negative, imp * neg, 0).sum(1) / mean_imp
    else:
        mass = np.where(negative, neg, 0).sum(1)
    if variants.false_negative_prior:  # Chuang et al.: debiased estimator with its floor
        prior = variants.false_negative_prior
        mass = np.maximum((mass - prior * count * pos) / (1 - prior), count * np.exp(-1 / tau))
    return np.mean(-np.log(pos / (pos + mass)))


VARIANTS = {
    "additive_margin": Variants(additive_margin=0.2),
    "angular_margin": Variants(angular_margin=0.3),
    "debiased": Variants(false_negative_prior=0.1),
    "debiased_floor": Variants(false_negative_prior=0.9),
    "robinson_hard": Variants(hardness_concentration=1.0, false_negative_prior=0.1),
    "llave_weights": Variants(hardness_weight=2.0),
    "hardest_negatives": Variants(hardest_negatives=5),
    "all": Variants(0.1, 0.2, 0.1, 0.5, 1.0, 7),
}


def pair(seed):
    return random_embeddings(seed, N, D), random_embeddings(seed + 1, N, D)


# Each variant alone is a separate XLA compilation: the combined one runs by default, the rest are slow.
FAST = ("all", "debiased_floor")
VARIANT_PARAMS = [
    pytest.param(name, marks=() if name in FAST else pytest.mark.slow) for name in VARIANTS
]


@pytest.mark.parametrize("name", VARIANT_PARAMS)
def test_variant_matches_numpy_reference_value_and_gradient(name):
    variants = VARIANTS[name]
    z1, z2 = pair(0)
    (loss, _), grads = value_and_grad(nt_xent, 2, **vars(variants))(z1, z2, temperature=TAU)
    np.testing.assert_allclose(loss, np_variant_nt_xent(z1, z2, TAU, variants), rtol=1e-5)
    z = np_normalize(np.concatenate([z1, z2]))
    frozen = z @ z.T  # LLaVE weights come from a stop-gradient copy: no derivative through them
    ref = finite_difference_grad(
        lambda a, b: np_variant_nt_xent(a, b, TAU, variants, frozen), z1, z2
    )
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


def test_debiased_floor_is_active_in_its_test():
    z1, z2 = pair(0)
    n = N
    z = np_normalize(np.concatenate([z1, z2]))
    prior, count = 0.9, 2 * n - 2
    pos = np.exp(np.sum(z[:n] * z[n:], -1) / TAU)
    neg_mass = np.exp(z @ z.T / TAU).sum(1)[:n] - np.exp(1 / TAU) - pos
    assert np.any((neg_mass - prior * count * pos) / (1 - prior) < count * np.exp(-1 / TAU))


def test_hardest_negatives_only_receive_gradient_and_all_of_them_is_plain():
    k, rows, cols = 3, 4, 9
    sim = jnp.asarray(np.tanh(random_embeddings(2, rows, cols)))
    positive = jnp.eye(rows, cols, dtype=bool)

    def losses(s):
        options = (Variants(hardest_negatives=k), Variants(hardest_negatives=cols - 1), Variants())
        return [softmax_xent_rows(s, positive, ~positive, scale=2.0, variants=v) for v in options]

    hard, every, plain = jax.jit(losses)(sim)
    np.testing.assert_allclose(every, plain, rtol=1e-6)
    assert np.all(hard < plain)
    grad = jax.jit(jax.grad(lambda s: jnp.sum(losses(s)[0])))(sim)
    negative_grad = np.where(np.asarray(positive), 0.0, np.asarray(grad))
    assert np.all(np.count_nonzero(negative_grad, axis=1) == k)
    hardest = np.argsort(-np.where(positive, -np.inf, sim), axis=1)[:, :k]
    assert np.all(np.take_along_axis(negative_grad, hardest, 1) > 0)


def test_per_pair_temperatures():
    """A [rows, cols] scale matrix gives l_ij = s_ij / tau_ij."""
    rows, cols = 4, 6
    sim = np.tanh(random_embeddings(3, rows, cols)).astype(np.float32)
    tau = np.exp(0.3 * random_embeddings(4, rows, cols))
    positive = np.eye(rows, cols, dtype=bool)
    out = jax.jit(softmax_xent_rows)(sim, positive, ~positive, scale=1 / tau)
    logits = sim / tau
    np.testing.assert_allclose(out, np_logsumexp(logits) - logits[positive], rtol=1e-5)


def test_all_variants_eight_devices_equal_one_device():
    assert_distributed_equivalent(nt_xent, pair(5), 2, static=vars(VARIANTS["all"]), temperature=0.3)


@pytest.mark.parametrize("name", ["debiased_floor", "all"])
def test_variants_finite_at_logits_of_1e4(name):
    z1, z2 = pair(6)
    vg = value_and_grad(nt_xent, 2, **vars(VARIANTS[name]))
    assert_finite(vg(z1, z1 + 1e-3 * z2, temperature=1e-4))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"angular_margin": -0.1}, "angular_margin"),
        ({"hardness_concentration": -1.0}, "hardness_concentration"),
        ({"false_negative_prior": -0.1}, "false_negative_prior"),
        ({"hardest_negatives": 2.5}, "hardest_negatives"),
        ({"additive_margin": float("nan")}, "additive_margin"),
    ],
)
def test_bad_variants_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Variants(**kwargs)
