import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from contrastive.data import augment
from contrastive.data.augment import AugmentConfig, augment_views
from contrastive.parallel.mesh import make_mesh

IMAGES = jax.random.uniform(jax.random.key(0), (16, 8, 8, 1))
CFG = AugmentConfig(num_views=3)


def test_views_shape_range_and_independence():
    v = augment_views(jax.random.key(1), IMAGES, jnp.arange(16), CFG)
    assert v.shape == (16, 3, 8, 8, 1) and v.dtype == jnp.float32
    assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
    # Views of one image differ from each other, and differ across steps.
    assert float(jnp.abs(v[:, 0] - v[:, 1]).mean()) > 0.01
    w = augment_views(jax.random.key(2), IMAGES, jnp.arange(16), CFG)
    assert float(jnp.abs(v - w).mean()) > 0.01


def test_all_strengths_zero_is_identity():
    strengths = ["max_zoom", "max_rotation_deg", "max_shear", "max_shift", "brightness", "contrast", "noise_std",
                 "cutout_size", "cutout_prob"]  # every field the digits recipe's ops read
    off = AugmentConfig(**dict.fromkeys(strengths, 0))
    v = augment_views(jax.random.key(1), IMAGES, jnp.arange(16), off)
    np.testing.assert_allclose(v[:, 0], IMAGES, atol=1e-6)


def test_same_pixels_whatever_the_sharding():
    mesh = make_mesh(8)
    f = jax.jit(lambda x: augment_views(jax.random.key(3), x, jnp.arange(16), CFG))
    single = f(IMAGES)
    sharded = f(jax.device_put(IMAGES, NamedSharding(mesh, P("data"))))
    np.testing.assert_array_equal(np.asarray(single), np.asarray(sharded))


def test_a_view_depends_only_on_its_example_id():
    a = augment_views(jax.random.key(1), IMAGES, jnp.arange(16), CFG)
    b = augment_views(jax.random.key(1), IMAGES[::-1], jnp.arange(16)[::-1], CFG)
    np.testing.assert_allclose(a, b[::-1], atol=1e-6)


def test_bad_config_and_shapes():
    with pytest.raises(ValueError, match="augment.num_views must be >= 1"):
        AugmentConfig(num_views=0)
    with pytest.raises(ValueError, match="augment.noise_std must be >= 0"):
        AugmentConfig(noise_std=-1.0)
    with pytest.raises(ValueError, match=r"images must be \[B, H, W, C\]"):
        augment_views(jax.random.key(0), IMAGES[..., 0], jnp.arange(16), CFG)


@pytest.fixture
def two_view_recipe():
    augment.register_recipe("toy_noise_then_none", [("noise",), ()])
    yield "toy_noise_then_none"
    del augment.RECIPES["toy_noise_then_none"]


def test_a_recipe_gives_each_view_its_own_ops(two_view_recipe):
    cfg = AugmentConfig(num_views=4, recipe=two_view_recipe, noise_std=0.5)
    key, ids = jax.random.key(1), jnp.arange(16) + 100
    v = augment_views(key, IMAGES, ids, cfg)
    for plain in (1, 3):  # no ops: the image itself
        np.testing.assert_array_equal(v[:, plain], IMAGES)
    # View 0: clip(x + 0.5 n) with n from the view's own stream fold_in(fold_in(key, id), 0), split once.
    noise = jax.vmap(lambda i: jax.random.normal(jax.random.split(
        jax.random.fold_in(jax.random.fold_in(key, i), 0), 1)[0], (8, 8, 1)))(ids)
    np.testing.assert_allclose(v[:, 0], jnp.clip(IMAGES + 0.5 * noise, 0, 1), atol=1e-6)
    assert float(jnp.abs(v[:, 0] - v[:, 2]).mean()) > 0.05  # each view draws its own noise


def test_unknown_recipes_and_ops_are_refused():
    with pytest.raises(ValueError, match=r"augment.recipe='simclr_typo' is not one of 'digits'"):
        AugmentConfig(recipe="simclr_typo")
    with pytest.raises(ValueError, match=r"unknown: blurr"):
        augment.register_recipe("bad", [("affine", "blurr")])
    assert "bad" not in augment.RECIPES
