"""A small full-batch L-BFGS for smooth convex objectives on a flat parameter vector.

Why not `optax.lbfgs`: its zoom line search makes a large XLA program (one logistic-regression fit took
~5.5 s to compile on a busy 2-core CPU, this one ~2.5 s), and the runner calls the linear probe at the
end of every training run on a CPU host. This one (two-loop recursion, Nocedal & Wright 2006,
Alg. 7.4/7.5; Armijo backtracking; curvature pairs with s.y <= 0 skipped so the inverse-Hessian
estimate stays positive definite) is vmappable (a batch of problems runs as one while loop) and, on a
strictly convex objective such as L2-regularised logistic regression, converges to the same minimiser.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

_ARMIJO_C1 = 1e-4
_MAX_BACKTRACKS = 30
_FTOL = 1e-8  # below float32 resolution (6e-8): stops only once f no longer moves


def _direction(grad, s_hist, y_hist, rho):
    """-H grad by the two-loop recursion; history rows are oldest first, empty rows are zeros.

    Empty rows have rho = 0 and so contribute nothing: no masking is needed while memory fills up.
    """
    memory = s_hist.shape[0]

    def newest_to_oldest(j, carry):
        q, alphas = carry
        i = memory - 1 - j
        a = rho[i] * jnp.vdot(s_hist[i], q)
        return q - a * y_hist[i], alphas.at[i].set(a)

    q, alphas = jax.lax.fori_loop(0, memory, newest_to_oldest, (grad, jnp.zeros(memory)))
    # Initial inverse-Hessian scale s.y / y.y of the newest pair (Nocedal & Wright eq. 7.20).
    yy = jnp.vdot(y_hist[-1], y_hist[-1])
    gamma = jnp.where(yy > 0, jnp.vdot(s_hist[-1], y_hist[-1]) / jnp.where(yy > 0, yy, 1.0), 1.0)

    def oldest_to_newest(i, r):
        b = rho[i] * jnp.vdot(y_hist[i], r)
        return r + s_hist[i] * (alphas[i] - b)

    return -jax.lax.fori_loop(0, memory, oldest_to_newest, gamma * q)


def minimize(
    fun: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    *,
    max_iter: int,
    tol: float | jax.Array,
    memory: int = 10,
) -> tuple[jax.Array, jax.Array]:
    """Minimises `fun` from the flat vector `x0`; returns (x, iterations).

    Stops when ||grad|| <= tol, after `max_iter` iterations, or when a step decreases `fun` by less
    than float32 can resolve (relative 1e-8) or the line search fails. jit- and vmap-friendly.

    Pass `x0` in as an argument of the jitted caller rather than building it there with `jnp.zeros`:
    XLA:CPU in jax 0.10 miscompiles a dot with a broadcast-constant operand fused into a reduction,
    which corrupts the first function value.
    """
    value_and_grad = jax.value_and_grad(fun)
    f0, g0 = value_and_grad(x0)
    size = x0.shape[0]
    hist0 = (jnp.zeros((memory, size), x0.dtype), jnp.zeros((memory, size), x0.dtype), jnp.zeros(memory))

    def keep_going(carry):
        _, _, g, _, it, stalled = carry
        return (it < max_iter) & (jnp.linalg.norm(g) > tol) & ~stalled

    def iteration(carry):
        x, f, g, (s_hist, y_hist, rho), it, _ = carry
        d = _direction(g, s_hist, y_hist, rho)
        slope = jnp.vdot(g, d)
        # Round-off can make the quasi-Newton direction ascend; fall back to steepest descent.
        d, slope = jnp.where(slope < 0, d, -g), jnp.where(slope < 0, slope, -jnp.vdot(g, g))
        # The first step has no curvature information: start it at unit length.
        step0 = jnp.where(it == 0, 1.0 / jnp.maximum(1.0, jnp.linalg.norm(g)), 1.0)

        def insufficient(ls):
            step, f_new, _, n = ls
            # `not <=` also rejects NaN values from a too-long step.
            return ~(f_new <= f + _ARMIJO_C1 * step * slope) & (n < _MAX_BACKTRACKS)

        def backtrack(ls):
            step, _, _, n = ls
            f_new, g_new = value_and_grad(x + 0.5 * step * d)
            return 0.5 * step, f_new, g_new, n + 1

        # Starts at twice the first trial with f = inf so the loop body evaluates the first trial:
        # one traced copy of `value_and_grad` here instead of two keeps the compile short.
        start = (2.0 * step0, jnp.asarray(jnp.inf, f.dtype), g, -1)
        step, f_new, g_new, _ = jax.lax.while_loop(insufficient, backtrack, start)
        accepted = f_new <= f + _ARMIJO_C1 * step * slope
        s, y = step * d, g_new - g
        sy = jnp.vdot(s, y)
        push = accepted & (sy > 1e-10 * jnp.vdot(y, y))
        new_hist = (
            jnp.where(push, jnp.roll(s_hist, -1, axis=0).at[-1].set(s), s_hist),
            jnp.where(push, jnp.roll(y_hist, -1, axis=0).at[-1].set(y), y_hist),
            jnp.where(push, jnp.roll(rho, -1).at[-1].set(1.0 / jnp.where(push, sy, 1.0)), rho),
        )
        # Like scipy's `ftol`: once a step improves f by less than float32 can resolve, further
        # iterations only chase round-off, so stop rather than spin until `max_iter`.
        stalled = ~accepted | (f - f_new <= _FTOL * jnp.maximum(jnp.abs(f), jnp.abs(f_new)))
        x, f, g = (jnp.where(accepted, new, old) for new, old in ((x + s, x), (f_new, f), (g_new, g)))
        return x, f, g, new_hist, it + 1, stalled

    init = (x0, f0, g0, hist0, jnp.asarray(0), jnp.asarray(False))
    x, _, _, _, iterations, _ = jax.lax.while_loop(keep_going, iteration, init)
    return x, iterations
