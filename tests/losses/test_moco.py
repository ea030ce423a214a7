"""Tests of contrastive.losses.moco (MoCo v2 InfoNCE with a queue, MoCHi, FT)."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contrastive.losses.moco import moco, moco_similarities
from tests.losses.helpers import (
    D,
    N,
    assert_bfloat16_close,
    assert_distributed_equivalent,
    assert_finite,
    finite_difference_grad,
    np_logsumexp,
    np_normalize,
    random_embeddings,
    unit_rows,
    value_and_grad,
)

K = 32  # queue size
T = 0.2
MOCHI = {"mochi_hardest": 4, "mochi_mix": 8, "mochi_query_mix": 8}
FT = {"ft_extrapolation_alpha": 2.0, "ft_interpolation_alpha": 1.6}
ALL = {**MOCHI, **FT}
S = MOCHI["mochi_mix"] + MOCHI["mochi_query_mix"]


def vg(**static):
    """Jitted ((loss, metrics), (grad q, grad k)); queue, key and temperature are traced keywords."""
    return value_and_grad(moco, 2, **static)


@functools.cache
def similarities_fn(**static):
    return jax.jit(functools.partial(moco_similarities, **static))


def data(seed, noise=1.0):
    """Queries at an arbitrary scale, keys = queries + noise, a unit-norm queue."""
    q = random_embeddings(seed, N, D)
    k = q + noise * random_embeddings(seed + 1, N, D)
    return 2.5 * q, k, unit_rows(random_embeddings(seed + 2, K, D))


def np_moco(q, k, queue, tau, *, in_batch=True, synthetic=None, synthetic_sim=None, lam=None):
    """Float64 MoCo InfoNCE, mean over the batch (He et al. 2020, eq. 1).

    synthetic: constant [N, S, D] points, or a function of the normalised query giving them;
    synthetic_sim: constant [N, S] similarities (the "logits are constants" variant);
    lam: [N, D] FT extrapolation coefficients.
    """
    q, k, queue = np_normalize(q), np_normalize(k), np_normalize(queue)
    query, positive = q, k
    if lam is not None:
        query, positive = np_normalize(lam * q + (1 - lam) * k), np_normalize(lam * k + (1 - lam) * q)
    columns = [np.sum(query * positive, axis=-1, keepdims=True)]
    if in_batch:
        batch = query @ k.T
        np.fill_diagonal(batch, -np.inf)  # the own key is the positive column
        columns.append(batch)
    columns.append(query @ queue.T)
    if synthetic is not None:
        points = synthetic(query) if callable(synthetic) else synthetic
        columns.append(np.einsum("bd,bsd->bs", query, np.asarray(points, np.float64)))
    if synthetic_sim is not None:
        columns.append(np.asarray(synthetic_sim, np.float64))
    logits = np.concatenate(columns, axis=1) / tau
    return np.mean(np_logsumexp(logits) - logits[:, 0])


def fit_pair(h, u, v):
    """Least squares h ~ x u + y v: returns (x, y, residual norm)."""
    basis = np.stack([u, v], axis=1).astype(np.float64)
    (x, y), *_ = np.linalg.lstsq(basis, np.asarray(h, np.float64), rcond=None)
    return x, y, np.linalg.norm(basis @ np.array([x, y]) - h)


def best_fit(h, pairs):
    """The (x, y, residual, pair) of the candidate pair that spans h best."""
    return min((fit_pair(h, u, v) + ((i, j),) for (i, u), (j, v) in pairs), key=lambda fit: fit[2])


# ----------------------------------------------------------------------------------------- plain MoCo
@pytest.mark.parametrize("in_batch", [True, False])
def test_matches_numpy_reference_value_gradient_and_metrics(in_batch):
    q, k, queue = data(0)
    (loss, metrics), (grad_q, grad_k) = vg(in_batch_negatives=in_batch)(q, k, queue=queue, temperature=T)
    reference = lambda a: np_moco(a, k, queue, T, in_batch=in_batch)
    np.testing.assert_allclose(loss, reference(q), rtol=1e-5)
    np.testing.assert_allclose(grad_q, finite_difference_grad(reference, q)[0], rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(grad_k) == 0.0)

    qn, kn = np_normalize(q), np_normalize(k)
    pos, queue_sim = np.sum(qn * kn, axis=-1), qn @ queue.T
    negatives = [queue_sim] + ([np.where(np.eye(N, dtype=bool), -np.inf, qn @ kn.T)] if in_batch else [])
    hits = pos > np.max(np.concatenate(negatives, axis=1), axis=1)
    assert 0 < hits.mean() < 1, "the data should make top-1 informative"
    np.testing.assert_allclose(metrics["pos_sim"], pos.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["neg_sim"], queue_sim.mean(), atol=1e-6)
    np.testing.assert_allclose(metrics["top1_acc"], hits.mean())
    assert set(metrics) == {"pos_sim", "neg_sim", "top1_acc"}
    assert all(v.dtype == jnp.float32 and v.shape == () for v in metrics.values())


def test_in_batch_negatives_add_the_other_keys_to_the_denominator():
    q, k, queue = data(1)
    with_batch = vg(in_batch_negatives=True)(q, k, queue=queue, temperature=T)[0][0]
    without = vg(in_batch_negatives=False)(q, k, queue=queue, temperature=T)[0][0]
    qn, kn = np_normalize(q), np_normalize(k)
    extra = np.where(np.eye(N, dtype=bool), -np.inf, qn @ kn.T) / T
    logits = np.concatenate([np.sum(qn * kn, -1, keepdims=True), qn @ queue.T], axis=1) / T
    expected_gap = np.mean(np.logaddexp(np_logsumexp(logits), np_logsumexp(extra)) - np_logsumexp(logits))
    np.testing.assert_allclose(with_batch - without, expected_gap, rtol=1e-4)


def test_keys_and_queue_get_no_gradient():
    q, k, queue = data(2)
    grads = jax.jit(jax.grad(lambda k_, queue_: moco(q, k_, queue_, temperature=T)[0], argnums=(0, 1)))(k, queue)
    for g in grads:
        assert np.all(np.asarray(g) == 0.0)


# ----------------------------------------------------------------------------------------- distributed
@pytest.mark.parametrize(
    "static",
    [
        {"in_batch_negatives": True},
        {"in_batch_negatives": False},
        pytest.param(MOCHI, marks=pytest.mark.slow),
        pytest.param(FT, marks=pytest.mark.slow),
        pytest.param({**ALL, "in_batch_negatives": False}, marks=pytest.mark.slow),
    ],
    ids=["plain", "queue_only", "mochi", "ft", "all_options"],
)
def test_eight_devices_equal_one_device(static):
    q, k, queue = data(3)
    assert_distributed_equivalent(moco, (q, k), 2, static=static, queue=queue, key=jax.random.key(7), temperature=T)


# ----------------------------------------------------------------------------------------- MoCHi
def test_mochi_points_are_mixtures_of_the_hardest_negatives():
    """h = normalize(a n_i + (1-a) n_j), n_i != n_j among the N hardest, a ~ U(0, 1); h' mixes q with b ~ U(0, .5)."""
    q, k, queue = data(4)
    sims = similarities_fn(**MOCHI)(q, k, queue, key=jax.random.key(0))
    qn = np_normalize(q)
    hardest_idx = np.argsort(-(qn @ queue.T), axis=1)[:, : MOCHI["mochi_hardest"]]
    np.testing.assert_allclose(sims.hardest_sim, np.take_along_axis(qn @ queue.T, hardest_idx, 1), atol=1e-6)
    points = np.asarray(sims.synthetic, np.float64)
    assert points.shape == (N, S, D)
    np.testing.assert_allclose(np.linalg.norm(points, axis=-1), 1.0, rtol=1e-5)

    mix_a, query_b = [], []
    for row in range(N):
        hard = list(enumerate(queue[hardest_idx[row]]))
        for h in points[row, : MOCHI["mochi_mix"]]:
            x, y, residual, (i, j) = best_fit(h, itertools.combinations(hard, 2))
            assert residual < 1e-5 and x > 0 and y > 0, (row, i, j, residual, x, y)
            mix_a.append(x / (x + y))
        for h in points[row, MOCHI["mochi_mix"] :]:
            x, y, residual, _ = best_fit(h, itertools.product([(0, qn[row])], hard))
            assert residual < 1e-5 and x >= 0 and y > 0, (row, residual, x, y)
            query_b.append(x / (x + y))
    mix_a, query_b = np.array(mix_a), np.array(query_b)
    assert np.all(query_b <= 0.5 + 1e-5)
    # 128 draws each: U(0, 1) has mean .5, std .29; U(0, .5) mean .25, std .14 (4 standard errors).
    assert abs(mix_a.mean() - 0.5) < 0.1 and 0.2 < mix_a.std() < 0.38
    assert abs(query_b.mean() - 0.25) < 0.05 and 0.1 < query_b.std() < 0.19


def test_mochi_synthetic_points_carry_no_gradient():
    """grad q equals the reference with the synthetic POINTS held constant (their logits still depend on q).

    Two other readings are checked to give a different gradient, so this test can tell them apart:
    h' = normalize(b q + (1-b) n_j) recomputed from q (gradient through the q inside h'), and the synthetic
    logits themselves held constant (no push of q away from the synthetic points).
    """
    q, k, queue = data(5)
    key = jax.random.key(1)
    (loss, _), (grad_q, grad_k) = vg(**MOCHI)(q, k, queue=queue, key=key, temperature=T)
    points = np.asarray(similarities_fn(**MOCHI)(q, k, queue, key=key).synthetic, np.float64)
    reference = lambda a: np_moco(a, k, queue, T, synthetic=points)
    np.testing.assert_allclose(loss, reference(q), rtol=1e-5)
    expected = finite_difference_grad(reference, q)[0]
    np.testing.assert_allclose(grad_q, expected, rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(grad_k) == 0.0)

    # Recover (b, n_j) of every h' to rebuild it as a function of q.
    qn = np_normalize(q)
    hardest = queue[np.argsort(-(qn @ queue.T), axis=1)[:, : MOCHI["mochi_hardest"]]]
    recipes = []
    for row in range(N):
        for h in points[row, MOCHI["mochi_mix"] :]:
            x, y, _, (_, j) = best_fit(h, itertools.product([(0, qn[row])], enumerate(hardest[row])))
            recipes.append((row, x / (x + y), hardest[row, j]))

    def query_dependent_points(query):
        rebuilt = points.copy()
        for t, (row, b, n) in enumerate(recipes):
            rebuilt[row, MOCHI["mochi_mix"] + t % MOCHI["mochi_query_mix"]] = np_normalize(b * query[row] + (1 - b) * n)
        return rebuilt

    np.testing.assert_allclose(query_dependent_points(qn), points, atol=1e-5)  # the recipes are right
    leaky = finite_difference_grad(lambda a: np_moco(a, k, queue, T, synthetic=query_dependent_points), q)[0]
    fixed_sim = np.einsum("bd,bsd->bs", qn, points)
    frozen = finite_difference_grad(lambda a: np_moco(a, k, queue, T, synthetic_sim=fixed_sim), q)[0]
    for other in (leaky, frozen):
        assert np.max(np.abs(other - expected)) > 100 * 1e-5


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_mochi_negatives_are_harder_than_the_queue(seed):
    q, k, queue = data(seed)
    (_, metrics), _ = vg(**MOCHI)(q, k, queue=queue, key=jax.random.key(seed), temperature=T)
    qn = np_normalize(q)
    top = -np.sort(-(qn @ queue.T), axis=1)[:, : MOCHI["mochi_hardest"]]
    np.testing.assert_allclose(metrics["hardest_neg_sim"], top.mean(), atol=1e-6)
    assert metrics["mochi_sim"] > metrics["neg_sim"]
    assert metrics["hardest_neg_sim"] > metrics["neg_sim"]


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), perm_seed=st.integers(0, 2**16))
def test_mochi_loss_is_invariant_to_the_queue_order(seed, perm_seed):
    q, k, queue = data(seed)
    perm = np.random.default_rng(perm_seed).permutation(K)
    f = vg(**MOCHI)
    base = f(q, k, queue=queue, key=jax.random.key(3), temperature=T)[0][0]
    np.testing.assert_allclose(f(q, k, queue=queue[perm], key=jax.random.key(3), temperature=T)[0][0], base, rtol=1e-5)


def test_random_options_follow_the_key():
    q, k, queue = data(6)
    f = vg(**MOCHI)
    loss = lambda seed: float(f(q, k, queue=queue, key=jax.random.key(seed), temperature=T)[0][0])
    assert loss(0) == loss(0)
    assert loss(0) != loss(1)


# ----------------------------------------------------------------------------------------- FT
def recover_extrapolation(q, k, query, positive):
    """lam of q' = normalize(lam q + (1-lam) k), k' = normalize(lam k + (1-lam) q), per row and dimension.

    Before normalising, q' + k' = q + k and q' - k' = (2 lam - 1)(q - k): fit the two scales from the
    first identity (D equations, 2 unknowns, exact), then read lam from the second.
    """
    qn, kn = np_normalize(q), np_normalize(k)
    lam, residuals = np.zeros_like(qn), []
    for row in range(len(qn)):
        u, v, residual = fit_pair(qn[row] + kn[row], query[row], positive[row])
        residuals.append(residual)
        lam[row] = ((u * query[row] - v * positive[row]) / (qn[row] - kn[row]) + 1) / 2
    return lam, np.array(residuals)


@pytest.mark.slow
def test_ft_matches_numpy_reference_with_recovered_coefficients():
    q, k, queue = data(8)
    key = jax.random.key(2)
    (loss, metrics), (grad_q, grad_k) = vg(**FT)(q, k, queue=queue, key=key, temperature=T)
    sims = similarities_fn(**FT)(q, k, queue, key=key)
    query, positive = np.asarray(sims.query, np.float64), np.asarray(sims.positive_key, np.float64)
    lam, residuals = recover_extrapolation(q, k, query, positive)
    assert np.all(residuals < 1e-5)
    well_posed = np.abs(np_normalize(q) - np_normalize(k)) > 0.05
    assert np.all((lam[well_posed] > 1 - 1e-3) & (lam[well_posed] < 2 + 1e-3))
    # Per dimension (not one lam per sample): lam varies inside every row. Beta(2, 2) has mean .5, std .22.
    assert np.all(np.std(np.where(well_posed, lam, np.nan), axis=1, where=well_posed) > 0.05)
    assert abs(lam[well_posed].mean() - 1.5) < 0.06

    # The queue in the loss is the transformed one; with it and lam the float64 reference must agree.
    transformed_queue = np.asarray(sims.queue, np.float64)
    reference = lambda a: np_moco(a, k, transformed_queue, T, lam=lam)
    np.testing.assert_allclose(loss, reference(q), rtol=1e-4)
    np.testing.assert_allclose(grad_q, finite_difference_grad(reference, q)[0], rtol=1e-3, atol=1e-4)
    assert np.all(np.asarray(grad_k) == 0.0)

    # Extrapolation gives harder positives than the plain pair.
    (_, plain_metrics), _ = vg(in_batch_negatives=True)(q, k, queue=queue, temperature=T)
    assert metrics["pos_sim"] < plain_metrics["pos_sim"] - 0.05


@pytest.mark.slow
def test_ft_interpolated_queue_mixes_each_row_with_a_permuted_partner():
    q, k, queue = data(9)
    transformed = np.asarray(similarities_fn(**FT)(q, k, queue, key=jax.random.key(4)).queue, np.float64)
    np.testing.assert_allclose(np.linalg.norm(transformed, axis=1), 1.0, rtol=1e-5)
    partners, weights = [], []
    for r in range(K):
        if np.linalg.norm(transformed[r] - queue[r]) < 1e-5:  # a fixed point of the permutation
            partners.append(r)
            continue
        others = ((p, queue[p]) for p in range(K) if p != r)
        x, y, residual, (_, p) = best_fit(transformed[r], itertools.product([(r, queue[r])], others))
        assert residual < 1e-5 and x > 0 and y > 0, (r, residual, x, y)
        partners.append(p)
        weights.append(x / (x + y))
    assert sorted(partners) == list(range(K)), "partners must form a permutation of the queue"
    assert len(weights) > K // 2 and 0.3 < np.mean(weights) < 0.7  # Beta(1.6, 1.6): mean .5, std .24


# ----------------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("static", [{}, pytest.param({**ALL, "in_batch_negatives": False}, marks=pytest.mark.slow)])
def test_finite_at_logits_of_1e4(static):
    q, k, queue = data(10)
    assert_finite(vg(**static)(q, k, queue=queue, key=jax.random.key(0), temperature=1e-4))


def test_bfloat16_inputs_give_float32_loss():
    q, k, queue = data(11, noise=0.5)
    assert_bfloat16_close(moco, (q, k), 2, queue=queue, temperature=T)


@pytest.mark.slow
def test_bfloat16_inputs_give_float32_loss_with_mochi():
    q, k, queue = data(11, noise=0.5)
    mochi = functools.partial(moco, **MOCHI)
    assert_bfloat16_close(mochi, (q, k), 2, atol=2e-2, queue=queue, key=jax.random.key(0), temperature=T)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), perm_seed=st.integers(0, 2**16))
def test_invariant_to_permuting_the_batch(seed, perm_seed):
    q, k, queue = data(seed)
    perm = np.random.default_rng(perm_seed).permutation(N)
    f = vg(in_batch_negatives=True)
    base = f(q, k, queue=queue, temperature=T)[0][0]
    np.testing.assert_allclose(f(q[perm], k[perm], queue=queue, temperature=T)[0][0], base, rtol=1e-5)


# ----------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "shapes, kwargs, match",
    [
        (((4, 3), (4, 2), (8, 3)), {}, "q and k must have the same shape"),
        (((4, 3), (4, 3), (8, 2)), {}, "queue rows must have the embedding size"),
        (((4, 3), (4, 3), (0, 3)), {}, "at least one key"),
        (((4,), (4,), (8, 3)), {}, "q must have rank 2"),
        (((4, 3), (4, 3), (8, 3)), {"temperature": 0.0}, "temperature"),
        (((4, 3), (4, 3), (8, 3)), {"mochi_hardest": 4, "mochi_mix": 2}, "key"),
        (((4, 3), (4, 3), (8, 3)), {"ft_extrapolation_alpha": 1.0}, "key"),
        (((4, 3), (4, 3), (8, 3)), {"ft_interpolation_alpha": 1.0}, "key"),
        (((4, 3), (4, 3), (8, 3)), {"mochi_hardest": 1, "mochi_mix": 2, "key": 0}, "mochi_hardest must be >= 2"),
        (((4, 3), (4, 3), (8, 3)), {"mochi_hardest": 9, "mochi_query_mix": 2, "key": 0}, "exceeds the queue size"),
        (((4, 3), (4, 3), (8, 3)), {"mochi_mix": 2, "key": 0}, "need mochi_hardest > 0"),
        (((4, 3), (4, 3), (8, 3)), {"mochi_hardest": 2, "key": 0}, "nothing to synthesise"),
        (((4, 3), (4, 3), (8, 3)), {"mochi_hardest": 2.0, "mochi_mix": 1, "key": 0}, "non-negative Python int"),
        (((4, 3), (4, 3), (8, 3)), {"mochi_hardest": True, "mochi_mix": 1, "key": 0}, "non-negative Python int"),
        (((4, 3), (4, 3), (8, 3)), {"mochi_query_mix": -1}, "non-negative Python int"),
        (((4, 3), (4, 3), (8, 3)), {"ft_extrapolation_alpha": -1.0, "key": 0}, ">= 0"),
        (((4, 3), (4, 3), (8, 3)), {"ft_interpolation_alpha": float("nan"), "key": 0}, ">= 0"),
    ],
)
def test_bad_arguments_raise(shapes, kwargs, match):
    if kwargs.get("key") == 0:
        kwargs = {**kwargs, "key": jax.random.key(0)}
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda a, b, c: moco(a, b, c, **kwargs)).trace(*(jnp.ones(s) for s in shapes))


def test_traced_ft_alpha_is_rejected():
    q, k, queue = (jnp.ones(s) for s in ((4, 3), (4, 3), (8, 3)))
    with pytest.raises(ValueError, match="concrete number"):
        jax.jit(lambda a: moco(q, k, queue, key=jax.random.key(0), ft_extrapolation_alpha=a)).trace(1.0)
