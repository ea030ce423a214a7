"""jaxlib 0.10's CPU backend miscompiles reductions of dots with constant operands unless
`contrastive` disables that fusion (see contrastive/__init__.py)."""

import jax
import jax.numpy as jnp
import numpy as np

import contrastive  # noqa: F401 - sets XLA_FLAGS


def test_dot_with_constant_operand_then_sum_is_right():
    x = np.random.default_rng(0).normal(size=(898, 8)).astype(np.float32)
    got = jax.jit(lambda x: (x @ jnp.ones((8, 10))).sum())(x)
    np.testing.assert_allclose(got, (x.astype(np.float64) @ np.ones((8, 10))).sum(), rtol=1e-4)
