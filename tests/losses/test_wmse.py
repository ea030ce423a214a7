"""Tests of contrastive.losses.wmse (whitening and the W-MSE loss)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from contrastive.losses.wmse import whiten, wmse
from tests.losses.helpers import (
    assert_distributed_equivalent,
    assert_finite,
    data_mesh,
    finite_difference_grad,
    np_normalize,
    random_embeddings,
    value_and_grad,
)

DEVICES = 8
DIM = 4
KEY = jax.random.key(0)


def np_whiten(x, eps=0.0):
    x = np.asarray(x, np.float64)
    centred = x - x.mean(axis=0)
    cov = (1 - eps) * centred.T @ centred / (len(x) - 1) + eps * np.eye(x.shape[1])
    return np.linalg.solve(np.linalg.cholesky(cov), centred.T).T


def np_wmse(z, groupings, eps=0.0):
    """Float64 W-MSE; ``groupings[k]`` lists the row-index arrays of iteration k's whitening groups."""
    z = np.asarray(z, np.float64)
    views = z.shape[1]
    distances = []
    for groups in groupings:
        white = np.empty_like(z)
        for rows in groups:
            for view in range(views):
                white[rows, view] = np_whiten(z[rows, view], eps)
        for i in range(views):
            for j in range(i + 1, views):
                distances.append(2 - 2 * np.sum(np_normalize(white[:, i]) * np_normalize(white[:, j]), -1))
    return np.mean(distances)


def assert_grad_matches_sampled_finite_differences(grad, f, z, num=48, seed=0):
    """Central differences of the float64 reference ``f`` at ``num`` random coordinates of ``z``."""
    z = np.array(z, np.float64)
    flat = np.random.default_rng(seed).choice(z.size, num, replace=False)
    for idx in zip(*np.unravel_index(flat, z.shape)):
        orig, step = z[idx], 1e-6
        z[idx] = orig + step
        up = f(z)
        z[idx] = orig - step
        down = f(z)
        z[idx] = orig
        np.testing.assert_allclose(grad[idx], (up - down) / (2 * step), rtol=1e-3, atol=1e-5, err_msg=str(idx))


def jax_groups(key, b, rows, w_iter, offset=0):
    """The groups wmse draws on one device: permutation of split(key, w_iter)[k], chunks of ``rows``."""
    return [
        list(np.asarray(jax.random.permutation(k, b)).reshape(-1, rows) + offset)
        for k in jax.random.split(key, w_iter)
    ]


def local_groups(key, b_local, w_size, w_iter):
    """Local whitening on DEVICES devices: device d groups its own rows with the key fold_in(key, d)."""
    per_device = [
        jax_groups(jax.random.fold_in(key, d), b_local, w_size, w_iter, offset=d * b_local) for d in range(DEVICES)
    ]
    return [sum((per_device[d][k] for d in range(DEVICES)), []) for k in range(w_iter)]


def embeddings(seed, b, views=2, dim=DIM):
    """Correlated, non-centred, well-conditioned embeddings (whitening has something to undo)."""
    rotation, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    mix = rotation @ np.diag(np.linspace(0.5, 2.0, dim)) @ rotation.T
    return (random_embeddings(seed, b, views, dim) @ mix + 0.3).astype(np.float32)


def test_whitened_rows_have_zero_mean_and_identity_covariance():
    x = embeddings(0, 64, 1, 8)[:, 0]
    white = np.asarray(jax.jit(whiten)(x), np.float64)
    np.testing.assert_allclose(white.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(8), atol=1e-4)
    np.testing.assert_allclose(white, np_whiten(x), rtol=1e-4, atol=1e-4)
    shrunk = jax.jit(lambda a: whiten(a, eps=0.2))(x)
    np.testing.assert_allclose(shrunk, np_whiten(x, eps=0.2), rtol=1e-4, atol=1e-4)


def test_one_group_matches_numpy_value_metrics_and_gradient():
    """w_size = batch: the permutation does not matter."""
    z = embeddings(1, 16)
    (loss, metrics), (grad,) = value_and_grad(wmse, 1, w_size=16)(z, key=KEY)
    np.testing.assert_allclose(loss, np_wmse(z, [[np.arange(16)]]), rtol=1e-4)
    np.testing.assert_allclose(metrics["cos_sim"], 1 - loss / 2, rtol=1e-5, atol=1e-6)
    ref_std = np.mean(np.std(np_normalize(z.reshape(-1, DIM)), axis=0))
    np.testing.assert_allclose(metrics["output_std"], ref_std, rtol=1e-5)
    (ref,) = finite_difference_grad(lambda a: np_wmse(a, [[np.arange(16)]]), z)
    np.testing.assert_allclose(grad, ref, rtol=1e-3, atol=1e-5)


def test_random_groups_four_views_and_shrinkage_match_numpy():
    """W-MSE 4: 3 iterations of 4 random groups of 8, each view whitened separately, eps = 0.1."""
    z = embeddings(2, 32, views=4)
    groupings = jax_groups(KEY, 32, 8, 3)
    (loss, _), (grad,) = value_and_grad(wmse, 1, w_size=8, w_iter=3)(z, key=KEY, eps=0.1)
    np.testing.assert_allclose(loss, np_wmse(z, groupings, eps=0.1), rtol=1e-4)
    assert_grad_matches_sampled_finite_differences(grad, lambda a: np_wmse(a, groupings, eps=0.1), z)
    assert not np.isclose(loss, np_wmse(z, jax_groups(jax.random.key(1), 32, 8, 3), eps=0.1), rtol=1e-3)


@pytest.mark.parametrize(
    "n, w_size, views, eps",
    [(16, 16, 2, 0.0), (64, 16, 2, 0.0), (48, 12, 4, 0.1)],
    ids=["one-group", "four-groups", "four-groups-of-12-four-views-shrinkage"],
)
def test_global_whitening_on_eight_devices_equals_one_device(n, w_size, views, eps):
    """Global groups are those of axis_name=None on the concatenated batch (w_size need not be a multiple of 8)."""
    static = {"w_size": w_size, "w_iter": 2, "whitening": "global"}
    z = embeddings(3, n, views)
    assert_distributed_equivalent(wmse, (z,), 1, static=static, rtol=1e-4, key=KEY, eps=eps)


def test_global_whitening_does_not_depend_on_the_number_of_devices():
    z = embeddings(7, 64)
    one = jax.jit(lambda a: wmse(a, key=KEY, w_size=16, w_iter=2)[0])(z)
    for devices in (1, 2, 4):
        fn = lambda a: wmse(a, key=KEY, w_size=16, w_iter=2, whitening="global", axis_name="data")[0]
        mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
        sharded = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P("data"), out_specs=P()))
        np.testing.assert_allclose(sharded(z), one, rtol=1e-5, err_msg=f"{devices} devices")


@pytest.mark.parametrize(
    "whitening, b_local, w_size",
    [("local", 8, 8), ("local", 16, 8), ("global", 8, 16)],
    ids=["local-one-group-per-device", "local-two-groups-per-device", "global-four-groups"],
)
def test_eight_devices_match_numpy_per_device_or_global_groups(whitening, b_local, w_size):
    """Local: each device permutes its rows with fold_in(key, d). Global: one permutation of the N rows."""
    z = embeddings(4, DEVICES * b_local)
    if whitening == "local":
        groupings = local_groups(KEY, b_local, w_size, 2)
    else:
        groupings = jax_groups(KEY, len(z), w_size, 2)
    for groups in groupings:  # every row is in exactly one group
        np.testing.assert_array_equal(np.sort(np.concatenate(groups)), np.arange(len(z)))
    f = value_and_grad(wmse, 1, distributed=True, w_size=w_size, w_iter=2, whitening=whitening)
    (loss, metrics), (grad,) = f(z, key=KEY)
    np.testing.assert_allclose(loss, np_wmse(z, groupings), rtol=1e-4)
    np.testing.assert_allclose(metrics["cos_sim"], 1 - loss / 2, rtol=1e-5, atol=1e-6)
    assert_grad_matches_sampled_finite_differences(grad, lambda a: np_wmse(a, groupings), z)


def test_finite_for_large_embeddings():
    assert_finite(value_and_grad(wmse, 1, w_size=16)(1e4 * embeddings(5, 16), key=KEY))


def test_bfloat16_inputs_give_float32_loss():
    z = embeddings(6, 16)
    f = value_and_grad(wmse, 1, w_size=16)
    (loss_bf16, _), _ = f(jnp.asarray(z, jnp.bfloat16), key=KEY)
    assert loss_bf16.dtype == jnp.float32
    np.testing.assert_allclose(loss_bf16, f(z, key=KEY)[0][0], atol=2e-2)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), perm_seed=st.integers(0, 2**16))
def test_one_group_is_invariant_to_permuting_images_and_views(seed, perm_seed):
    z = embeddings(seed, 16)
    rng = np.random.default_rng(perm_seed)
    f = value_and_grad(wmse, 1, w_size=16)
    base = f(z, key=KEY)[0][0]
    np.testing.assert_allclose(f(z[rng.permutation(16)], key=KEY)[0][0], base, rtol=1e-4)
    np.testing.assert_allclose(f(z[:, ::-1], key=KEY)[0][0], base, rtol=1e-4)


def trace(z_shape, axis_name=None, **kwargs):
    fn = lambda z: wmse(z, key=KEY, axis_name=axis_name, **kwargs)[0]
    if axis_name is not None:
        fn = jax.shard_map(fn, mesh=data_mesh(), in_specs=P("data"), out_specs=P())
    jax.jit(fn).trace(jnp.ones(z_shape))


@pytest.mark.parametrize(
    "z_shape, kwargs, match",
    [
        ((16, 1, 4), {"w_size": 16}, "at least 2 views"),
        ((16, 4), {"w_size": 16}, "z must have rank 3"),
        ((16, 2, 4), {"w_size": 16, "whitening": "batch"}, "whitening must be one of"),
        ((16, 2, 4), {"w_size": 12}, r"w_size \(12\) must divide the local batch \(16 rows\)"),
        ((16, 2, 8), {"w_size": 8}, r"w_size \(8\) must be larger than the embedding dimension D \(8\).*singular"),
        ((64, 2, 4), {"w_size": 12, "whitening": "local", "axis_name": "data"}, r"divide the local batch \(8 rows\)"),
        ((64, 2, 4), {"w_size": 48, "whitening": "global", "axis_name": "data"}, r"divide the global batch \(64 rows"),
    ],
)
def test_bad_arguments_raise(z_shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        trace(z_shape, **kwargs)


def test_shrinkage_allows_groups_not_larger_than_the_dimension():
    trace((16, 2, 8), w_size=8, eps=0.1)


def test_global_groups_may_exceed_or_not_divide_the_local_batch():
    trace((96, 2, 4), w_size=12, whitening="global", axis_name="data")  # 12 rows per device, 8 groups
    trace((64, 2, 4), w_size=32, whitening="global", axis_name="data")  # 8 rows per device, 2 groups
