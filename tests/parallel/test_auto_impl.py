"""impl='auto' (the default of the softmax losses): the resolution rule, and auto == gather where it streams."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive.losses import clip, nt_xent, siglip, streamed, supcon
from contrastive.losses.core import Variants
from contrastive.losses.streamed import auto_chunk_size, auto_impl, resolve_impl
from tests.losses.helpers import assert_trees_close, data_mesh, random_embeddings, unit_rows, value_and_grad
from tests.parallel.cases import CASES, clip_positional, nt_xent_positional


# ----------------------------------------------------------------------------------------- the rule
@pytest.mark.parametrize(
    "local_rows, axis_size, sharded, expected",
    [
        (32, 1, False, ("gather", None)),  # tiny: dense reference
        (4096, 1, False, ("gather", None)),  # below 8,192 global rows
        (8191, 1, False, ("gather", None)),
        (8192, 1, False, ("gather", 512)),  # one device: tiled
        (16384, 1, False, ("gather", 512)),
        (8320, 1, False, ("gather", 128)),  # 8320 = 65 x 128: largest power of two in [128, 512]
        (9000, 1, False, ("gather", 500)),  # no power of two in range divides: largest divisor
        (8209, 1, False, ("gather", None)),  # prime: no tile, the dense path
        (256, 8, True, ("gather", None)),  # B = 2,048 on 8 devices
        (511, 8, True, ("gather", None)),  # 4,088 rows
        (512, 8, True, ("ring", None)),  # B = 4,096: ring from 4,096 global rows at any d
        (1024, 8, True, ("ring", 512)),  # B = 8,192: ring, local blocks of 1,024 in tiles of 512
        (4096, 8, True, ("ring", 512)),  # large local blocks are tiled too
        (8209, 8, True, ("ring", None)),  # no tile divides: plain b x b ring blocks
        (8192, 1, True, ("ring", 512)),  # an axis of size 1 still takes the ring
    ],
)
def test_auto_rule(local_rows, axis_size, sharded, expected):
    assert auto_impl(local_rows, axis_size, sharded=sharded) == expected
    assert auto_impl(local_rows, axis_size, sharded=sharded, dim=512) == expected  # a large d: the same rule


@pytest.mark.parametrize(
    "local_rows, kwargs, expected",
    [
        (4096, {"dim": 256}, ("gather", 512)),  # one device, a small d: tiled from 4,096 rows
        (4095, {"dim": 128}, ("gather", None)),
        (4096, {"dim": 257}, ("gather", None)),  # a large d: from 8,192 rows
        (4096, {"dim": 512, "fused": True}, ("gather", 512)),  # SigLIP's fused tiled path: from 4,096 at any d
        (2048, {"dim": 32, "fused": True}, ("gather", None)),  # below 4,096: dense
    ],
)
def test_auto_rule_on_one_device_tiles_from_4096_rows_where_tiles_are_cheap(local_rows, kwargs, expected):
    assert auto_impl(local_rows, 1, sharded=False, **kwargs) == expected
    # sharded: the ring from 4,096 global rows at every d
    assert auto_impl(4096 // 8, 8, sharded=True, **kwargs) == ("ring", None)
    assert auto_impl(4088 // 8, 8, sharded=True, **kwargs) == ("gather", None)


@pytest.mark.parametrize("kwargs", [{"whole_rows": True}, {"pair_scale": True}])
@pytest.mark.parametrize("sharded", [False, True])
def test_auto_rule_needs_dense_rows(kwargs, sharded):
    assert auto_impl(16384, 8 if sharded else 1, sharded=sharded, **kwargs) == ("gather", None)


def test_auto_chunk_size():
    assert auto_chunk_size(512) is None and auto_chunk_size(96) is None  # one tile already
    assert auto_chunk_size(1024) == 512 and auto_chunk_size(768) == 256 and auto_chunk_size(640) == 128
    assert auto_chunk_size(1000) == 500 and auto_chunk_size(1021) is None


def test_explicit_impl_and_chunk_size_are_kept():
    big = {"local_rows": 16384, "axis_name": None}
    assert resolve_impl("gather", None, **big) == ("gather", None, False)
    assert resolve_impl("ring", None, **big) == ("ring", None, True)
    assert resolve_impl("gather", 64, local_rows=64, axis_name=None) == ("gather", 64, True)
    assert resolve_impl("auto", 256, **big) == ("gather", 256, True)  # explicit chunk kept
    assert resolve_impl("auto", 8, local_rows=16, axis_name=None) == ("gather", 8, True)  # small: still tiled
    assert resolve_impl("auto", None, **big, variants=Variants(hardest_negatives=2)) == ("gather", None, False)
    assert resolve_impl("auto", None, **big, scale=jnp.ones((16384, 1))) == ("gather", None, False)
    with pytest.raises(ValueError, match="impl"):
        resolve_impl("rings", None, **big)
    with pytest.raises(ValueError, match="hardest_negatives"):
        resolve_impl("auto", 256, **big, variants=Variants(hardest_negatives=2))


def _jaxpr(loss, *shapes, distributed, **kw):
    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    f = lambda *a: loss(*a, **kw)[0]
    if distributed:
        f = jax.shard_map(
            lambda *a: loss(*a, axis_name="data", **kw)[0], mesh=data_mesh(), in_specs=jax.P("data"), out_specs=jax.P()
        )
    return str(jax.make_jaxpr(f)(*args))


IMAGE_TEXT = {"clip": (clip, {"logit_scale": 5.0}), "siglip": (siglip, {"logit_scale": 5.0, "logit_bias": -5.0})}


@pytest.mark.parametrize("loss", sorted(IMAGE_TEXT))
@pytest.mark.parametrize("batch, streams", [(2048, False), (4096, True)])
def test_default_resolves_by_global_rows_when_sharded(batch, streams, loss):
    loss_fn, hparams = IMAGE_TEXT[loss]
    jaxpr = _jaxpr(loss_fn, (batch, 16), (batch, 16), distributed=True, **hparams)
    assert ("ppermute" in jaxpr) == streams
    assert ("all_gather" in jaxpr) != streams


@pytest.mark.parametrize("pairs, dim, streams", [(1024, 16, False), (2048, 16, True), (2048, 512, False),
                                                (4096, 512, True)])  # 2N = 2,048 / 4,096 / 8,192 rows
def test_default_resolves_by_global_rows_and_dim_on_one_device(pairs, dim, streams):
    jaxpr = _jaxpr(nt_xent, (pairs, dim), (pairs, dim), distributed=False, temperature=0.5)
    assert ("scan" in jaxpr or "while" in jaxpr) == streams


@pytest.mark.parametrize("batch, reduction, streams", [(2048, "mean", False), (4096, "mean", True),
                                                       (4096, "none", False), (8192, "none", True)])
def test_siglip_default_tiles_from_4096_rows_where_fused(batch, reduction, streams):
    """d = 512: the fused tiled SigLIP (one device, mean) from 4,096 rows; reduction='none' runs the two-pass
    tiled path, which keeps the 8,192-row rule."""
    jaxpr = _jaxpr(siglip, (batch, 512), (batch, 512), distributed=False, logit_scale=5.0, logit_bias=-5.0,
                   reduction=reduction)
    assert ("scan" in jaxpr or "while" in jaxpr) == streams


def test_hardest_negatives_keep_the_dense_path():
    jaxpr = _jaxpr(clip, (4096, 16), (4096, 16), distributed=True, logit_scale=5.0, hardest_negatives=2)
    assert "all_gather" in jaxpr and "ppermute" not in jaxpr


# ----------------------------------------------------------------------------------------- auto == gather
def test_auto_on_one_device_equals_gather_where_it_tiles(monkeypatch):
    monkeypatch.setattr(streamed, "AUTO_MIN_GLOBAL_ROWS", 4096)  # the rule at half the size: a faster test
    z1, z2 = random_embeddings(20, 2048, 8), random_embeddings(21, 2048, 8)  # 4,096 rows: tiles of 512
    args = (z1, z2, np.float32(0.5))
    assert auto_impl(2 * 2048, 1, sharded=False) == ("gather", 512)
    auto = value_and_grad(nt_xent_positional, 3)(*args)
    gather = value_and_grad(nt_xent_positional, 3, impl="gather")(*args)
    assert_trees_close(auto, gather, rtol=1e-4, atol=1e-7)


def test_auto_on_eight_devices_equals_gather_where_it_rings():
    x, y = unit_rows(random_embeddings(22, 4096, 8)), unit_rows(random_embeddings(23, 4096, 8))
    args = (x, y, np.float32(5.0))
    assert auto_impl(4096 // 8, 8, sharded=True) == ("ring", None)
    auto = value_and_grad(clip_positional, 3, distributed=True)(*args)
    gather = value_and_grad(clip_positional, 3, distributed=True, impl="gather")(*args)
    assert_trees_close(auto, gather, rtol=1e-4, atol=1e-7)


def _supcon_small_tiles(z, temperature, labels, **kw):
    return supcon(z, labels, temperature=temperature, **kw)


def test_auto_ring_with_tiles_equals_gather(monkeypatch):
    """Large local blocks (ring + tiles), at test size: thresholds lowered so that 16 x 3 rows tile."""
    monkeypatch.setattr(streamed, "AUTO_MIN_ROWS_CHEAP", 32)
    monkeypatch.setattr(streamed, "AUTO_MAX_TILE", 4)
    monkeypatch.setattr(streamed, "AUTO_MIN_TILE", 2)
    assert auto_impl(2 * 3, 8, sharded=True) == ("ring", 2)
    _, num_diff, args = CASES["supcon"]
    jaxpr = _jaxpr_supcon(*args)
    assert "ppermute" in jaxpr and "all_gather" not in jaxpr
    auto = value_and_grad(_supcon_small_tiles, num_diff, distributed=True)(*args)
    gather = value_and_grad(_supcon_small_tiles, num_diff, impl="gather")(*args)
    assert_trees_close(auto, gather)


def _jaxpr_supcon(z, temperature, labels):
    f = jax.shard_map(
        lambda z, labels: supcon(z, labels, temperature=temperature, axis_name="data")[0],
        mesh=data_mesh(),
        in_specs=jax.P("data"),
        out_specs=jax.P(),
    )
    return str(jax.make_jaxpr(f)(z, labels))


@pytest.mark.parametrize("loss", sorted(IMAGE_TEXT))
def test_default_is_memory_bounded_at_large_batch(loss):
    """XLA's buffer plan for the default at B = 8,192 on one device: far below one B x B logit matrix."""
    b = 8192
    x = jax.ShapeDtypeStruct((b, 16), jnp.float32)
    loss_fn, hparams = IMAGE_TEXT[loss]
    f = jax.jit(jax.grad(lambda a, c: loss_fn(a, c, **hparams)[0], argnums=(0, 1)))
    # tiles of 512: ~0.075 of one B x B float32 matrix; the gather path's plan is ~8 of them
    assert f.lower(x, x).compile().memory_analysis().temp_size_in_bytes < 0.1 * b * b * 4
