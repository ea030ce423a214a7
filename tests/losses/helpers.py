"""Shared test utilities: the public checks of ``contrastive.testing`` plus test-only NumPy helpers.

XLA compilation dominates the run time of these tests on CPU, so every test of a module reuses the
same compiled ``value_and_grad`` (same shapes; hyper-parameters are traced arguments, not constants).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from contrastive.losses.core import l2_normalize, similarity
from contrastive.losses.streamed import multi_view_meta, pair_masks
from contrastive.testing import (  # noqa: F401 - re-exported for the loss tests
    assert_finite,
    assert_trees_close,
    check_bfloat16,
    check_devices,
    check_finite_at_large_logits,
    check_gradient,
    check_loss,
    check_permutation_invariance,
    data_mesh,
    finite_difference_grad,
    value_and_grad,
)

N, D = 16, 8  # global batch used by the equivalence tests: 2 rows per virtual device


def random_embeddings(seed: int, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def np_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return np_normalize(x).astype(np.float32)


def np_logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def multi_view_pairs(z, labels, axis_name=None):
    """The dense block the softmax engine sees for a multi-view batch on one device: cosine similarities
    of the view-major rows [V b, V b], with self and positive masks."""
    assert axis_name is None, "one device only"
    b, num_views, _ = z.shape
    rows = jnp.swapaxes(l2_normalize(z), 0, 1).reshape(b * num_views, -1)
    meta = multi_view_meta(b, num_views, labels, None)
    positive, negative = pair_masks(meta, meta)
    return similarity(rows, rows), ~(positive | negative), positive


def assert_distributed_equivalent(loss_fn, args, num_diff, static=None, rtol=1e-5, **hparams):
    """Value, metrics and gradients of the loss on 8 devices equal the single-device ones."""
    assert len(jax.devices()) == 8, "tests/conftest.py must give 8 virtual devices"
    check_devices(loss_fn, args, num_diff, static, rtol, **hparams)


def assert_bfloat16_close(loss_fn, args, num_diff, atol=1e-2, **hparams):
    """bfloat16 embeddings give a float32 loss within ``atol`` of the float32 loss."""
    check_bfloat16(loss_fn, args, num_diff, atol=atol, **hparams)
