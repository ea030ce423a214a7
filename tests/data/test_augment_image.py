"""The simclr / byol image ops against their definitions (contrastive/data/augment.py's docstring)."""

import functools

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from contrastive.data import augment
from contrastive.data.augment import AugmentConfig, augment_image, augment_views
from contrastive.parallel.mesh import make_mesh

RGB = jax.random.uniform(jax.random.key(0), (16, 32, 32, 3))
# Every op of the simclr recipe off: a config in which a test turns one on.
OFF = dict(recipe="simclr", crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0,
           grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)


def apply(op, images, key=1, **settings):
    """`op` alone on every image (each with its own key), the config as view 0 sees it."""
    cfg = AugmentConfig(**{**OFF, **settings}).for_view(0)
    keys = jax.random.split(jax.random.key(key), images.shape[0])
    return jax.jit(jax.vmap(lambda k, x: augment_image(k, x, cfg, (op,))))(keys, images)


def test_grayscale_is_the_rec601_luma_in_every_channel():
    out = np.asarray(apply("grayscale", RGB, grayscale_prob=1.0))
    luma = np.asarray(RGB) @ np.array([0.2989, 0.5870, 0.1140])  # dm-pix's rec601 (TensorFlow's) weights
    np.testing.assert_allclose(out, np.repeat(luma[..., None], 3, axis=-1), atol=1e-6)


def test_flip_mirrors_the_columns_and_is_an_involution():
    once = apply("flip", RGB, flip_prob=1.0)
    np.testing.assert_array_equal(once, RGB[:, :, ::-1])
    np.testing.assert_array_equal(apply("flip", once, flip_prob=1.0), RGB)


@pytest.mark.parametrize(("height", "width"), [(32, 32), (24, 40)])
def test_crop_boxes_have_area_and_aspect_ratio_in_range_and_lie_inside(height, width):
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    keys = jax.random.split(jax.random.key(3), 2000)
    boxes = jax.jit(jax.vmap(lambda k: augment.random_crop_box(k, height, width, scale, ratio)))(keys)
    top, left, h, w = np.asarray(boxes).T
    area, aspect = h * w / (height * width), w / h
    assert area.min() >= scale[0] - 1e-6 and area.max() <= scale[1] + 1e-6
    assert aspect.min() >= ratio[0] - 1e-5 and aspect.max() <= ratio[1] + 1e-5
    assert top.min() >= 0 and left.min() >= 0
    assert (top + h).max() <= height + 1e-4 and (left + w).max() <= width + 1e-4
    # The draws cover the ranges, distributed as torchvision's rule gives them (first of 10 draws that
    # fits, else the fallback), here simulated in NumPy.
    assert area.min() < 0.1
    rng = np.random.default_rng(0)
    s = rng.uniform(*scale, (20000, 10)) * height * width
    r = np.exp(rng.uniform(*np.log(ratio), (20000, 10)))
    fits = (np.sqrt(s * r) <= width) & (np.sqrt(s / r) <= height)
    fallback = min(width, height * ratio[1]) * min(height, width / ratio[0]) / (height * width)
    ref_area = np.where(fits.any(1), s[np.arange(20000), fits.argmax(1)] / (height * width), fallback)
    ref_ratio = np.where(fits.any(1), r[np.arange(20000), fits.argmax(1)], ratio[1] if width > height else 1.0)
    for q in (0.1, 0.5, 0.9):
        assert np.quantile(area, q) == pytest.approx(np.quantile(ref_area, q), abs=0.03)
        assert np.quantile(np.log(aspect), q) == pytest.approx(np.quantile(np.log(ref_ratio), q), abs=0.03)


def test_a_crop_no_draw_fits_falls_back_to_the_central_box_of_the_nearest_ratio():
    # Ratios 3..4 at 90-100% of a square's area never fit: the whole width, height width / 3, centred.
    boxes = jax.jit(jax.vmap(lambda k: augment.random_crop_box(k, 30, 30, (0.9, 1.0), (3.0, 4.0))))(
        jax.random.split(jax.random.key(0), 8))
    np.testing.assert_allclose(boxes, np.tile([10.0, 0.0, 10.0, 30.0], (8, 1)), atol=1e-5)


def test_a_crop_resizes_its_box_bilinearly_to_the_image_size():
    ramp = jnp.broadcast_to(jnp.arange(32.0)[None, :, None] / 31, (32, 32, 3))  # value = column / 31
    top, left, h, w = 4.0, 6.5, 16.0, 20.0
    out = np.asarray(augment.resize_box(ramp, jnp.array([top, left, h, w])))
    # Output column j samples input column left + (j + 1/2) w / W - 1/2 (pixel centres); linear is exact.
    expected = (left + (np.arange(32) + 0.5) * w / 32 - 0.5) / 31
    np.testing.assert_allclose(out[10, :, 0], expected, atol=1e-5)
    assert np.ptp(out[:, 5, 1]) < 1e-6  # rows are copies: the ramp does not vary along them
    np.testing.assert_allclose(augment.resize_box(RGB[0], jnp.array([0.0, 0.0, 32.0, 32.0])), RGB[0], atol=1e-6)


def test_hue_shifts_of_0_and_1_are_the_identity_and_others_match_dm_pix():
    hsv = jax.jit(augment.adjust_hsv)
    for delta in (0.0, 1.0, -1.0):
        np.testing.assert_allclose(hsv(RGB, delta, 1.0), RGB, atol=2e-6)
    np.testing.assert_allclose(hsv(RGB, 0.3, 1.0), jax.jit(dm_pix.adjust_hue)(RGB, 0.3), atol=1e-6)
    np.testing.assert_allclose(hsv(RGB, 0.0, 1.7), jax.jit(dm_pix.adjust_saturation)(RGB, 1.7), atol=1e-6)


def test_color_jitter_applies_the_four_adjustments_in_its_drawn_order():
    cfg = AugmentConfig(**{**OFF, "jitter_prob": 1.0}).for_view(0)  # simclr's strengths 0.8, 0.8, 0.8, 0.2
    jitter = jax.jit(lambda k, x: augment_image(k, x, cfg, ("color_jitter",)))
    orders = set()
    for seed in range(4):
        key = jax.random.key(seed)
        k_apply, k_order, k_b, k_c, k_s, k_h = jax.random.split(key, 6)
        order = [int(i) for i in jax.random.permutation(k_order, 4)]
        orders.add(tuple(order))
        draws = [jax.random.uniform(k_b, (), minval=-0.8, maxval=0.8),
                 jax.random.uniform(k_c, (), minval=0.2, maxval=1.8),
                 jax.random.uniform(k_s, (), minval=0.2, maxval=1.8),
                 jax.random.uniform(k_h, (), minval=-0.2, maxval=0.2)]
        ops = [dm_pix.adjust_brightness, dm_pix.adjust_contrast, dm_pix.adjust_saturation, dm_pix.adjust_hue]
        steps = [lambda x, op=op, d=d: op(x, d) for op, d in zip(ops, draws)]
        expected = functools.reduce(lambda y, i: jnp.clip(steps[i](y), 0.0, 1.0), order, RGB[0])
        out = jitter(key, RGB[0])
        np.testing.assert_allclose(out, expected, atol=1e-5)
        assert float(jnp.abs(out - RGB[0]).mean()) > 0.01
    assert len(orders) > 1


def test_solarize_inverts_the_pixels_at_or_above_the_threshold():
    x = jnp.array([0.0, 0.2, 0.4999, 0.5, 0.7, 1.0]).reshape(1, 1, 6, 1).repeat(3, axis=-1)
    out = np.asarray(apply("solarize", x, solarize_prob=1.0))[0, 0, :, 0]
    np.testing.assert_allclose(out, [0.0, 0.2, 0.4999, 0.5, 0.3, 0.0], atol=1e-6)
    out = np.asarray(apply("solarize", x, solarize_prob=1.0, solarize_threshold=0.8))[0, 0, :, 0]
    np.testing.assert_allclose(out, [0.0, 0.2, 0.4999, 0.5, 0.7, 0.0], atol=1e-6)


def test_blur_kernel_sums_to_one_keeps_a_constant_image_and_is_the_gaussian():
    assert augment.blur_radius(AugmentConfig(), 224) == 11 and augment.blur_radius(AugmentConfig(), 32) == 1
    for sigma in (0.1, 1.0, 2.0):
        assert float(augment.gaussian_kernel(sigma, 5).sum()) == pytest.approx(1.0, abs=1e-6)
    constant = jnp.full((4, 32, 32, 3), 0.7)
    np.testing.assert_allclose(apply("blur", constant, blur_prob=1.0), constant, atol=1e-6)
    # The response to an impulse (far from the border) is g g^T with g_k ~ exp(-k^2 / (2 sigma^2)).
    sigma, radius = 1.5, 4
    impulse = jnp.zeros((40, 40, 1)).at[20, 20, 0].set(1.0)
    response = np.asarray(augment.gaussian_blur(impulse, sigma, radius))[16:25, 16:25, 0]
    g = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma**2))
    g /= g.sum()
    np.testing.assert_allclose(response, np.outer(g, g), atol=1e-6)
    assert response.sum() == pytest.approx(1.0, abs=1e-5)
    # sigma is drawn from blur_sigma: a fixed range gives that blur.
    fixed = apply("blur", RGB, blur_prob=1.0, blur_sigma=(1.5, 1.5), blur_kernel_frac=9 / 32)
    np.testing.assert_allclose(fixed, jax.vmap(lambda x: augment.gaussian_blur(x, 1.5, 4))(RGB), atol=1e-6)


# (op, its probability field, settings under which the op changes every image it is applied to; a sigma of
# 0.1 pixel would leave an image as it is)
OPS_AND_PROBS = [("flip", "flip_prob", {}), ("color_jitter", "jitter_prob", {}), ("grayscale", "grayscale_prob", {}),
                 ("blur", "blur_prob", {"blur_sigma": (1.0, 2.0), "blur_kernel_frac": 0.25}),
                 ("solarize", "solarize_prob", {})]


@pytest.mark.parametrize(("op", "prob", "settings"), OPS_AND_PROBS)
def test_probability_0_leaves_images_untouched_1_changes_every_image_and_one_half_about_half(op, prob, settings):
    images = jax.random.uniform(jax.random.key(4), (400, 16, 16, 3))
    out = {p: np.asarray(apply(op, images, **{prob: p}, **settings)) for p in (0.0, 0.5, 1.0)}
    changed = {p: np.abs(x - np.asarray(images)).max(axis=(1, 2, 3)) > 1e-3 for p, x in out.items()}
    np.testing.assert_array_equal(out[0.0], images)
    assert changed[1.0].all()
    assert 150 < changed[0.5].sum() < 250  # Binomial(400, 0.5): mean 200, sd 10


def byol_blur_and_solarize_only(**settings):
    return AugmentConfig(**{**OFF, "recipe": "byol", "blur_prob": (), "solarize_prob": (), "blur_sigma": (1.0, 2.0),
                            **settings})


@pytest.mark.slow
def test_byol_recipe_gives_each_view_its_own_settings():
    cfg = AugmentConfig(recipe="byol")
    first, second = cfg.for_view(0), cfg.for_view(1)
    assert (first.blur_prob, first.solarize_prob, second.blur_prob, second.solarize_prob) == (1.0, 0.0, 0.1, 0.2)
    for view in (first, second):
        assert (view.jitter_prob, view.jitter_brightness, view.jitter_contrast, view.jitter_saturation,
                view.jitter_hue, view.grayscale_prob, view.flip_prob) == (0.8, 0.4, 0.4, 0.2, 0.1, 0.2, 0.5)
    assert cfg.for_view(2) == first  # view v uses entry v % 2
    simclr = AugmentConfig(recipe="simclr").for_view(1)
    assert (simclr.blur_prob, simclr.solarize_prob, simclr.jitter_brightness, simclr.jitter_hue) == (0.5, 0.0, 0.8, 0.2)
    cifar = AugmentConfig(recipe="simclr_cifar").for_view(0)
    assert (cifar.blur_prob, cifar.jitter_brightness, cifar.jitter_saturation, cifar.jitter_hue) == (0.0, 0.4, 0.4, 0.1)
    # An explicit value wins over the recipe's; a number means every view.
    assert AugmentConfig(recipe="byol", blur_prob=0.5).for_view(0).blur_prob == 0.5

    # Left half constant 0.8 (blur keeps it, solarize turns it to 0.2), right half noise below 0.5 (blur
    # changes it, solarize does not): which views were blurred or solarised, over 256 images.
    noise = jax.random.uniform(jax.random.key(5), (256, 32, 16, 3), maxval=0.45)
    images = jnp.concatenate([jnp.full((256, 32, 16, 3), 0.8), noise], axis=2)
    cfg = byol_blur_and_solarize_only()
    views = np.asarray(jax.jit(lambda x: augment_views(jax.random.key(6), x, jnp.arange(256), cfg))(images))
    solarized = np.abs(views[:, :, 8, 4, 0] - 0.2) < 1e-5
    blurred = np.abs(views[:, :, 2:-2, 20:-2] - np.asarray(noise)[:, None, 2:-2, 4:-2]).max(axis=(2, 3, 4)) > 1e-3
    assert blurred[:, 0].all() and not solarized[:, 0].any()  # view 0: blur 1.0, solarize 0.0
    assert 8 <= blurred[:, 1].sum() <= 45 and 25 <= solarized[:, 1].sum() <= 80  # view 1: 0.1, 0.2 of 256


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["simclr", "byol"])
def test_views_are_jittable_in_range_and_the_same_on_1_and_8_devices(recipe):
    cfg = AugmentConfig(recipe=recipe, num_views=3)
    f = jax.jit(lambda x, ids: augment_views(jax.random.key(7), x, ids, cfg))
    single = np.asarray(f(RGB, jnp.arange(16)))
    sharding = NamedSharding(make_mesh(8), P("data"))
    sharded = np.asarray(f(jax.device_put(RGB, sharding), jax.device_put(jnp.arange(16), sharding)))
    np.testing.assert_array_equal(single, sharded)
    assert single.shape == (16, 3, 32, 32, 3) and single.dtype == np.float32
    assert single.min() >= 0.0 and single.max() <= 1.0
    assert np.abs(single[:, 0] - single[:, 1]).mean() > 0.05
    # Each row's views depend on its example id alone, not its position in the batch.
    flipped = f(RGB[::-1], jnp.arange(16)[::-1])
    np.testing.assert_allclose(np.asarray(flipped)[::-1], single, atol=1e-6)


@pytest.mark.slow
def test_one_channel_images_colour_ops_act_as_on_gray_rgb():
    gray = jax.random.uniform(jax.random.key(8), (8, 16, 16, 1))
    np.testing.assert_array_equal(apply("grayscale", gray, grayscale_prob=1.0), gray)
    hue_and_saturation_only = dict(jitter_prob=1.0, jitter_brightness=0.0, jitter_contrast=0.0)
    np.testing.assert_array_equal(apply("color_jitter", gray, **hue_and_saturation_only), gray)
    # Brightness and contrast apply, as to an RGB image whose channels are equal.
    as_rgb = apply("color_jitter", jnp.repeat(gray, 3, axis=-1), jitter_prob=1.0)
    np.testing.assert_allclose(apply("color_jitter", gray, jitter_prob=1.0), as_rgb[..., :1], atol=1e-5)
    cfg = AugmentConfig(recipe="simclr", jitter_hue=0.0)
    views = jax.jit(lambda x: augment_views(jax.random.key(9), x, jnp.arange(8), cfg))(gray)
    assert views.shape == (8, 2, 16, 16, 1) and float(jnp.abs(views[:, 0] - views[:, 1]).mean()) > 0.01


def test_colour_ops_refuse_other_channel_counts():
    with pytest.raises(ValueError, match=r"recipe='simclr' uses color_jitter, grayscale, which need RGB or one"):
        AugmentConfig(recipe="simclr").check_image((32, 32, 4))
    AugmentConfig(recipe="digits").check_image((32, 32, 4))
    with pytest.raises(ValueError, match="needs RGB or one-channel images, got 2 channels"):
        apply("grayscale", jnp.zeros((1, 8, 8, 2)), grayscale_prob=1.0)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("blur_prob", (1.0, 1.1), r"config.augment.blur_prob must be a probability in \[0, 1\] or a tuple"),
    ("flip_prob", -0.5, r"config.augment.flip_prob must be a probability"),
    ("jitter_hue", 0.6, r"config.augment.jitter_hue must be a hue shift in \[0, 0.5\]"),
    ("jitter_brightness", (0.4, -0.1), r"config.augment.jitter_brightness must be a strength >= 0"),
    ("crop_scale", (0.5, 0.2), r"config.augment.crop_scale must be a pair \(low, high\) with 0 < low <= high <= 1"),
    ("crop_scale", (0.0, 1.0), r"config.augment.crop_scale must be a pair"),
    ("crop_ratio", (0.75,), r"config.augment.crop_ratio must be a pair"),
    ("blur_sigma", (0.0, 2.0), r"config.augment.blur_sigma must be a pair"),
    ("blur_kernel_frac", 1.5, r"config.augment.blur_kernel_frac must be in \[0, 1\]"),
    ("solarize_threshold", -0.1, r"config.augment.solarize_threshold must be in \[0, 1\]"),
])
def test_bad_values_are_refused_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig(recipe="byol", **{field: value})


def test_command_line_overrides_of_per_view_fields():
    from contrastive.train.config import ConfigError, load_config, parse_overrides

    def augment_of(*argv):
        return AugmentConfig(**load_config("configs/simclr_digits.py", parse_overrides(list(argv))).augment)

    cfg = augment_of("--config.augment.recipe=simclr", "--config.augment.blur_prob=(1.0,0.1)")
    assert cfg.blur_prob == (1.0, 0.1) and cfg.solarize_prob == (0.0,)
    assert augment_of("--config.augment.recipe=byol", "--config.augment.solarize_prob=0.3").solarize_prob == (0.3,)
    assert augment_of("--config.augment.recipe=byol").blur_prob == (1.0, 0.1)
    with pytest.raises(ConfigError, match="augment.blur_prob"):
        augment_of("--config.augment.blur_prob='often'")


def test_recipe_settings_must_be_per_view_fields():
    with pytest.raises(ValueError, match=r"settings \['max_zoom'\] are not per-view fields"):
        augment.register_recipe("bad_settings", [("blur",)], {"max_zoom": 0.1})
    assert "bad_settings" not in augment.RECIPES


@pytest.mark.slow
def test_the_runner_train_step_traces_with_the_simclr_recipe_on_32x32_rgb():
    from contrastive.methods import Context
    from contrastive.models.encoders import build_model
    from contrastive.train.config import load_config
    from contrastive.train.objectives import view_method
    from contrastive.train.optim import build_optimizer
    from contrastive.train.step import init_state, make_train_step

    config = load_config("configs/simclr_digits.py")
    config.augment.recipe = "simclr"
    config.model.widths, config.model.head_hidden, config.model.projection_dim = (8, 16), (16,), 8
    mesh = make_mesh(8)
    model = build_model(config.model, (32, 32, 3), seed=0)
    method = view_method(config.loss.name)
    tx = build_optimizer(config.optimizer, config.num_steps)
    graphdef, state = init_state(model, tx, 0, method=method, config=config)
    ctx = Context(config=config, mesh=mesh, loss=method.bound_loss(config))
    step = make_train_step(graphdef, tx, method, ctx, AugmentConfig(**config.augment), max_pixel_value=255.0)
    sharding = NamedSharding(mesh, P("data"))
    batch = {"image": jax.ShapeDtypeStruct((64, 32, 32, 3), jnp.uint8, sharding=sharding),
             "label": jax.ShapeDtypeStruct((64,), jnp.int32, sharding=sharding)}
    abstract_state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    traced = step.trace(abstract_state, batch)
    assert traced.out_info[1]["loss"].shape == ()
