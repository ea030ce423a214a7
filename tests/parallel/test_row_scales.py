"""Per-row scales (one temperature per anchor, carried with the rows) on every path, and the per-row outputs.

A per-sample temperature [N] is sharded with the batch, so on 8 devices each holds its own samples' values.
Ring and tiles must equal the dense path, 8 devices must equal 1, gradients (embeddings and temperatures)
included; the dense path itself is checked against a float64 NumPy reference.
"""

import numpy as np
import pytest

from contrastive import testing
from contrastive.losses import clip, nt_xent
from tests.losses.helpers import D, N, np_logsumexp, np_normalize, random_embeddings, unit_rows
from tests.parallel.cases import clip_positional, nt_xent_positional

TAU = (0.5 * np.exp(0.4 * random_embeddings(30, N))).astype(np.float32)  # one temperature per sample
CASES = {
    "nt_xent": (nt_xent_positional, (random_embeddings(31, N, D), random_embeddings(32, N, D), TAU)),
    "clip": (clip_positional, (*(unit_rows(random_embeddings(seed, N, D)) for seed in (33, 34)), 1 / TAU)),
}
STREAMED = {"ring": {"impl": "ring"}, "tiled": {"chunk_size": 4}, "ring_tiled": {"impl": "ring", "chunk_size": 2}}


def np_nt_xent_rows(z1, z2, tau):
    """Float64 per-anchor NT-Xent with anchor a's temperature tau[a mod N]: (l_a, log D_a)."""
    n = len(z1)
    z = np_normalize(np.concatenate([z1, z2]))
    logits = (z @ z.T) / np.tile(np.asarray(tau, np.float64), 2)[:, None]
    positive = (np.arange(2 * n) + n) % (2 * n)
    log_denominator = np_logsumexp(np.where(np.eye(2 * n, dtype=bool), -np.inf, logits))
    return log_denominator - logits[np.arange(2 * n), positive], log_denominator


def np_clip(x, y, scale):
    """Float64 CLIP with pair i's logit scale in both of its rows."""
    scale = np.asarray(scale, np.float64)[:, None]
    sim = np.asarray(x, np.float64) @ np.asarray(y, np.float64).T
    i2t, t2i = scale * sim, scale * sim.T
    diag = np.arange(len(x))
    return 0.5 * (np.mean(np_logsumexp(i2t) - i2t[diag, diag]) + np.mean(np_logsumexp(t2i) - t2i[diag, diag]))


def dense(name):
    loss_fn, args = CASES[name]
    return testing.value_and_grad(loss_fn, 3, impl="gather")(*args)


def test_dense_per_row_temperatures_match_numpy():
    loss_fn, args = CASES["nt_xent"]
    reference = lambda z1, z2, tau: np.mean(np_nt_xent_rows(z1, z2, tau)[0])
    testing.check_gradient(loss_fn, reference, args, 3, static={"impl": "gather"})
    loss_fn, args = CASES["clip"]
    testing.check_gradient(loss_fn, np_clip, args, 3, static={"impl": "gather"})


@pytest.mark.parametrize("path", sorted(STREAMED))
@pytest.mark.parametrize("name", sorted(CASES))
def test_streamed_on_one_device_equals_dense(name, path):
    loss_fn, args = CASES[name]
    testing.assert_trees_close(testing.value_and_grad(loss_fn, 3, **STREAMED[path])(*args), dense(name))


@pytest.mark.parametrize("path", ["ring", "ring_tiled"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_ring_on_eight_devices_equals_dense_on_one(name, path):
    loss_fn, args = CASES[name]
    ring = testing.value_and_grad(loss_fn, 3, distributed=True, **STREAMED[path])(*args)
    testing.assert_trees_close(ring, dense(name))


@pytest.mark.parametrize("name", sorted(CASES))
def test_dense_eight_devices_equal_one_device(name):
    loss_fn, args = CASES[name]
    testing.check_devices(loss_fn, args, 3, static={"impl": "gather"})


@pytest.mark.parametrize("impl", ["gather", "ring"])
def test_per_row_outputs(impl):
    """reduction='none': per-anchor losses and log-denominators; their mean is the loss."""
    (z1, z2, tau), kw = CASES["nt_xent"][1], {"impl": impl}
    rows, _ = nt_xent(z1, z2, temperature=tau, reduction="none", **kw)
    expected_loss, expected_log_denominator = np_nt_xent_rows(z1, z2, tau)
    np.testing.assert_allclose(rows["loss"], expected_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rows["log_denominator"], expected_log_denominator, rtol=1e-5)
    np.testing.assert_allclose(np.mean(rows["loss"]), nt_xent(z1, z2, temperature=tau, **kw)[0], rtol=1e-6)
    x, y, scale = CASES["clip"][1]
    rows, _ = clip(x, y, logit_scale=scale, reduction="none", **kw)
    assert set(rows) == {"loss", "loss_i2t", "loss_t2i", "log_denominator_i2t", "log_denominator_t2i"}
    np.testing.assert_allclose(np.mean(rows["loss"]), np_clip(x, y, scale), rtol=1e-5)


def test_bad_per_row_shapes_and_reduction_raise():
    z1, z2, tau = CASES["nt_xent"][1]
    with pytest.raises(ValueError, match="per-row scale"):
        nt_xent(z1, z2, temperature=tau[:5])
    with pytest.raises(ValueError, match="reduction"):
        nt_xent(z1, z2, temperature=0.5, reduction="sum")
    with pytest.raises(ValueError, match="per-row"):
        nt_xent(z1, z2, temperature=np.ones((2 * N, 1), np.float32), impl="ring")  # per pair: dense only
