"""The tiled path (chunk_size) equals the gather path in value and gradient; it never holds B x B logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive.losses import clip, nt_xent
from tests.losses.helpers import assert_trees_close, value_and_grad
from tests.parallel.cases import CASES


def reference(name):
    loss_fn, num_diff, args = CASES[name]
    return value_and_grad(loss_fn, num_diff)(*args)


@pytest.mark.parametrize("name", ["clip", "nt_xent", pytest.param("supcon", marks=pytest.mark.slow)])
def test_tiles_on_one_device_equal_gather(name):
    loss_fn, num_diff, args = CASES[name]
    tiled = value_and_grad(loss_fn, num_diff, chunk_size=4)(*args)
    assert_trees_close(tiled, reference(name))


@pytest.mark.parametrize("name", ["clip", "nt_xent"])
def test_ring_with_tiles_on_eight_devices_equals_gather(name):
    loss_fn, num_diff, args = CASES[name]
    tiled = value_and_grad(loss_fn, num_diff, distributed=True, impl="ring", chunk_size=2)(*args)
    assert_trees_close(tiled, reference(name))


@pytest.mark.slow
def test_gathered_keys_with_tiles_on_eight_devices_equal_gather():
    loss_fn, num_diff, args = CASES["clip"]
    tiled = value_and_grad(loss_fn, num_diff, distributed=True, chunk_size=2)(*args)
    assert_trees_close(tiled, reference("clip"))


def test_tiled_memory_is_far_below_the_logit_matrix():
    """XLA's own buffer plan: the tiled loss + gradient needs a small fraction of one B x B matrix."""
    b, d, chunk = 4096, 16, 256
    x = jax.ShapeDtypeStruct((b, d), jnp.float32)

    def temp_bytes(**kw):
        f = jax.jit(jax.grad(lambda a, c: clip(a, c, logit_scale=10.0, **kw)[0], argnums=(0, 1)))
        return f.lower(x, x).compile().memory_analysis().temp_size_in_bytes

    logits_bytes = b * b * 4
    assert temp_bytes(chunk_size=chunk) < 0.05 * logits_bytes
    assert temp_bytes(impl="gather") > logits_bytes  # the gather path holds (at least) the full logits


@pytest.mark.parametrize("chunk_size", [3, 0, 2.0])
def test_bad_chunk_size_raises(chunk_size):
    x = np.ones((16, 8), np.float32)
    with pytest.raises(ValueError, match="chunk_size"):
        clip(x, x, logit_scale=5.0, chunk_size=chunk_size)
    with pytest.raises(ValueError, match="chunk_size"):
        nt_xent(x, x, temperature=0.5, impl="ring", chunk_size=chunk_size)


@pytest.mark.parametrize(
    "distributed, impl",
    [(False, "ring"), (True, "ring"), pytest.param(True, "gather", marks=pytest.mark.slow)],
)
def test_siglip_tiles_equal_the_dense_path(distributed, impl):
    loss_fn, num_diff, args = CASES["siglip"]
    tiled = value_and_grad(loss_fn, num_diff, distributed=distributed, impl=impl, chunk_size=2)(*args)
    assert_trees_close(tiled, reference("siglip"))
