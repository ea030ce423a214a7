"""Tests of contrastive.models.directpred (EMA correlation and the closed-form predictor)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from contrastive.models.directpred import init_correlation, predictor_weights, update_correlation

DIM = 6
RHO = 0.3

update = jax.jit(update_correlation)
weights = jax.jit(predictor_weights)


def features(seed, b=16, views=2):
    rng = np.random.default_rng(seed)
    scales = np.linspace(0.2, 2.0, DIM)  # distinct eigenvalues: a well-defined eigenbasis
    return (rng.standard_normal((b, views, DIM)) * scales + 0.5).astype(np.float32)


def np_ema(batches, rho):
    """The authors' Accumulator: the first batch's E[f f^T], then rho F + (1 - rho) E[f f^T]."""
    corr = None
    for f in batches:
        f = np.asarray(f, np.float64).reshape(-1, DIM)
        batch = f.T @ f / len(f)
        corr = batch if corr is None else rho * corr + (1 - rho) * batch
    return corr


def np_predictor(corr, eps):
    eigenvalues, eigenvectors = np.linalg.eigh(np.asarray(corr, np.float64))
    p = np.sqrt(np.clip(eigenvalues, 0, None) / eigenvalues.max()) + eps
    return eigenvectors @ np.diag(p) @ eigenvectors.T


def ema_state(seeds, rho=RHO):
    corr = init_correlation(DIM)
    for seed in seeds:
        corr = update(corr, features(seed), rho=rho)
    return corr


def test_ema_recursion_matches_numpy_from_the_first_update():
    batches = [features(seed) for seed in range(4)]
    corr = init_correlation(DIM)
    assert corr.shape == (DIM, DIM) and corr.dtype == jnp.float32 and not np.any(corr)
    for k, f in enumerate(batches):
        corr = update(corr, f, rho=RHO)
        np.testing.assert_allclose(corr, np_ema(batches[: k + 1], RHO), rtol=1e-5, atol=1e-6)
    # Both views pooled: [b, 2, D] is the same as the concatenated [2b, D].
    pooled = update(corr, jnp.concatenate([batches[0][:, 0], batches[0][:, 1]]), rho=RHO)
    np.testing.assert_allclose(update(corr, batches[0], rho=RHO), pooled, rtol=1e-6)


def test_predictor_equals_float64_eigendecomposition_of_the_ema():
    batches = [features(seed) for seed in range(10, 15)]
    corr = ema_state(range(10, 15))
    w = np.asarray(weights(corr, eps=0.1), np.float64)
    np.testing.assert_allclose(w, np_predictor(np_ema(batches, RHO), 0.1), atol=2e-5)
    np.testing.assert_allclose(w, w.T, atol=1e-6)
    eigenvalues = np.linalg.eigvalsh(w)
    assert eigenvalues.min() >= 0.1 - 1e-5
    np.testing.assert_allclose(eigenvalues.max(), 1.1, rtol=1e-5)
    np.testing.assert_allclose(w @ np.asarray(corr), np.asarray(corr) @ w, atol=1e-4)  # same eigenbasis


def test_non_symmetric_and_non_psd_input_is_symmetrised_and_clipped():
    """W(F + A) = W(F) for antisymmetric A; a negative eigenvalue gets p = eps."""
    corr = np.asarray(ema_state([20, 21]), np.float64)
    antisymmetric = np.triu(np.ones((DIM, DIM)), 1)
    antisymmetric -= antisymmetric.T
    np.testing.assert_allclose(weights(corr + 0.3 * antisymmetric), weights(corr), atol=2e-5)
    eigenvalues, eigenvectors = np.linalg.eigh(corr)
    eigenvalues[0] = -0.5 * eigenvalues[-1]
    indefinite = eigenvectors @ np.diag(eigenvalues) @ eigenvectors.T
    w = np.asarray(weights(indefinite, eps=0.05), np.float64)
    np.testing.assert_allclose(eigenvectors[:, 0] @ w @ eigenvectors[:, 0], 0.05, atol=1e-5)


def test_zero_state_gives_the_identity_predictor():
    np.testing.assert_array_equal(weights(init_correlation(DIM), eps=0.1), np.eye(DIM))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), log_scale=st.floats(-3, 3))
def test_predictor_is_invariant_to_scaling_the_correlation(seed, log_scale):
    corr = np.asarray(update(init_correlation(DIM), features(seed), rho=RHO))
    np.testing.assert_allclose(weights(10.0**log_scale * corr), weights(corr), atol=5e-5)


def test_eight_devices_update_equals_one_device():
    assert len(jax.devices()) == 8
    corr = ema_state([30, 31])
    f = features(32, b=64)
    sharded = jax.jit(
        jax.shard_map(
            lambda c, x: update_correlation(c, x, rho=RHO, axis_name="data"),
            mesh=Mesh(np.array(jax.devices()), ("data",)),
            in_specs=(P(), P("data")),
            out_specs=P(),
        )
    )
    np.testing.assert_allclose(sharded(corr, f), update(corr, f, rho=RHO), rtol=1e-5, atol=1e-6)
    # The empty state is replaced by the global E[f f^T] on every device too.
    np.testing.assert_allclose(sharded(init_correlation(DIM), f), np_ema([f], RHO), rtol=1e-5, atol=1e-6)


def test_no_gradient_flows_through_the_correlation_or_the_predictor():
    corr, f = ema_state([40]), features(41)
    probe = jnp.asarray(np.random.default_rng(0).standard_normal((DIM, DIM)), jnp.float32)
    for fn, args in ((lambda c, x: jnp.sum(probe * update_correlation(c, x, rho=RHO)), (corr, f)),
                     (lambda c: jnp.sum(probe * predictor_weights(c)), (corr,))):
        for g in jax.grad(fn, argnums=tuple(range(len(args))))(*args):
            np.testing.assert_array_equal(g, 0.0)

    # In a step, d/df of a loss of f @ W(F(f)) is that of f @ W with W a constant.
    def loss(x):
        w = predictor_weights(update_correlation(corr, x, rho=RHO))
        return jnp.sum(jnp.tanh(x @ w))

    w_const = predictor_weights(update_correlation(corr, f, rho=RHO))
    np.testing.assert_allclose(
        jax.grad(loss)(f), jax.grad(lambda x: jnp.sum(jnp.tanh(x @ w_const)))(f), rtol=1e-6
    )


@pytest.mark.parametrize(
    "fn, match",
    [
        (lambda: update_correlation(jnp.zeros((4, 4)), jnp.ones((3, 5)), rho=RHO), r"f must be \[..., D\]"),
        (lambda: update_correlation(jnp.zeros((4, 3)), jnp.ones((3, 3)), rho=RHO), "square"),
        (lambda: update_correlation(jnp.zeros((4, 4)), jnp.ones((3, 4)), rho=1.5), r"rho must be in \[0, 1\]"),
        (lambda: predictor_weights(jnp.zeros((4,))), "square"),
    ],
)
def test_bad_arguments_raise(fn, match):
    with pytest.raises(ValueError, match=match):
        fn()
