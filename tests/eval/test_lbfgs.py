"""The small L-BFGS behind the linear probe, on problems with a known minimiser."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive.eval import _lbfgs


@pytest.fixture(scope="module")
def quadratic():
    """f(x) = 1/2 (x - c)^T A (x - c), A with condition number 1e3; minimiser c.

    Written around its minimiser (not as 1/2 x^T A x - b^T x) so float32 evaluates f without the
    cancellation that would hide the last digits of progress.
    """
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    a = (q * np.logspace(0, 3, 30)) @ q.T
    c = rng.normal(size=30)
    return a.astype(np.float32), c.astype(np.float32), c


def quadratic_fn(a, c):
    return lambda x: 0.5 * (x - c) @ (a @ (x - c))


def test_reaches_the_minimiser_of_an_ill_conditioned_quadratic(quadratic):
    a, c, expected = quadratic
    solve = jax.jit(lambda x0: _lbfgs.minimize(quadratic_fn(a, c), x0, max_iter=500, tol=1e-5))
    x, iterations = solve(np.zeros(30, np.float32))
    np.testing.assert_allclose(x, expected, atol=1e-3)
    assert 0 < int(iterations) < 500


def test_vmapped_batch_matches_one_at_a_time(quadratic):
    a, c, _ = quadratic
    scales = jnp.array([0.5, 1.0, 2.0])

    def solve(scale, x0):
        return _lbfgs.minimize(quadratic_fn(a, scale * c), x0, max_iter=500, tol=1e-5)[0]

    batched = jax.jit(jax.vmap(solve, in_axes=(0, None)))(scales, np.zeros(30, np.float32))
    for row, scale in zip(batched, scales):
        np.testing.assert_allclose(row, jax.jit(solve)(scale, np.zeros(30, np.float32)), atol=1e-4)


def test_iteration_cap_and_stall_stop_the_loop(quadratic):
    a, c, _ = quadratic
    minimize = functools.partial(_lbfgs.minimize, quadratic_fn(a, c))
    _, capped = jax.jit(lambda x0: minimize(x0, max_iter=3, tol=0.0))(np.zeros(30, np.float32))
    assert int(capped) == 3
    # tol=0 can never be met in float32: the stall test must end the loop well before the cap.
    _, stalled = jax.jit(lambda x0: minimize(x0, max_iter=10_000, tol=0.0))(np.zeros(30, np.float32))
    assert int(stalled) < 10_000
