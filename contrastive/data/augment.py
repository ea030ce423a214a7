"""On-device augmentation: V random views per image, inside the jitted train step.

Every (image, view) pair draws from its own RNG stream, `fold_in(fold_in(key, example_id), view)`, where
`example_id` is the example's global position in the batch. The views therefore do not depend on how the
batch is sharded: one device and eight devices see exactly the same augmented pixels.

A recipe (`config.augment.recipe`, one entry of `RECIPES`) is a list of op names per view and the
per-view settings it chooses: view v applies `recipe.views[v % len(recipe.views)]` in order, each op one
entry of `OPS` (a function of its PRNG keys, the image and the `AugmentConfig` as view v sees it), then
clips to [0, 1]. `register_op` and `register_recipe` add one. Views with the same ops and settings are
computed by one program vmapped over them (and every program is vmapped over the batch).

The `digits` recipe suits small grayscale images such as the 8x8 digits, where SimCLR's colour and large
crops would destroy the class, the same for every view: a random affine map (zoom, rotation, shear and
translation, applied with bilinear sampling, `dm_pix.affine_transform`), then intensity jitter
(brightness and contrast), Gaussian pixel noise and cutout (DeVries & Taylor, 2017). Every strength is a
parameter; zero turns it off.

The `simclr`, `simclr_cifar` and `byol` recipes are SimCLR's (Chen et al. 2020, appendix A) and BYOL's
(Grill et al. 2020, table 6) image augmentations, one op list for every view:

1. `crop`: Inception-style random resized crop (Szegedy et al. 2015): area fraction s ~ U(crop_scale),
   aspect ratio r = w / h with log r ~ U(log crop_ratio), box h = sqrt(s H W / r), w = sqrt(s H W r) at a
   uniform position; 10 draws, the first that fits inside the image is used, otherwise the central crop
   of the whole image clamped to the ratio range (torchvision's rule, vectorised). The box is resized to
   H x W with bilinear interpolation (`jax.image.scale_and_translate`), sub-pixel boxes allowed.
2. `flip`: left-right flip with probability flip_prob (`dm_pix.random_flip_left_right`).
3. `color_jitter`, with probability jitter_prob, in a random order per view, each clipped to [0, 1]:
   brightness x + d, d ~ U(-b, b) (additive, `dm_pix.adjust_brightness`, as SimCLR v1's and BYOL's code);
   contrast (x - mean_c) f + mean_c per channel, f ~ U(max(0, 1 - c), 1 + c); saturation S f in HSV,
   f ~ U(max(0, 1 - s), 1 + s); hue H + d (mod 1), d ~ U(-h, h), in units of the whole hue circle.
4. `grayscale`: with probability grayscale_prob, luma 0.2989 R + 0.5870 G + 0.1140 B (dm-pix's rec601,
   TensorFlow's) copied to the three channels.
5. `blur`: with probability blur_prob, a Gaussian of sigma ~ U(blur_sigma) pixels and side
   2 floor(blur_kernel_frac H / 2) + 1 (23 at 224, 3 at 32), normalised to sum 1 (dm-pix's kernel),
   separable, on the image padded by reflection (so a constant image stays constant).
6. `solarize`: with probability solarize_prob, x -> 1 - x where x >= solarize_threshold.

Per-view settings (PER_VIEW fields) are tuples: view v uses entry v % len, so BYOL's asymmetric views are
`blur_prob=(1.0, 0.1)`, `solarize_prob=(0.0, 0.2)`; `()` means the recipe's value (`Recipe.settings`,
else `VIEW_DEFAULTS`, SimCLR's ImageNet values with colour strength s = 1).

One-channel images are treated as gray RGB images (R = G = B): saturation, hue and grayscale leave them
unchanged (exactly what they do to a gray RGB image, up to the luma weights summing to 0.9999), and
brightness and contrast apply. The colour ops refuse any other channel count than 1 or 3.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Callable

import dm_pix
import jax
import jax.numpy as jnp

from contrastive import checks

# Fields that hold one value per view: a tuple, view v uses entry v % len; () = the recipe's value.
PER_VIEW = ("flip_prob", "jitter_prob", "jitter_brightness", "jitter_contrast", "jitter_saturation", "jitter_hue",
            "grayscale_prob", "blur_prob", "solarize_prob")
# SimCLR on ImageNet (Chen et al. 2020, appendix A; colour strength s = 1: 0.8s, 0.8s, 0.8s, 0.2s).
VIEW_DEFAULTS = dict(flip_prob=0.5, jitter_prob=0.8, jitter_brightness=0.8, jitter_contrast=0.8,
                     jitter_saturation=0.8, jitter_hue=0.2, grayscale_prob=0.2, blur_prob=0.5, solarize_prob=0.0)


def _per_view_rule(ok, text):
    return checks.Rule(lambda v: len(v) > 0 and all(ok(x) for x in v),
                       "{field} must be " + text + " or a tuple of them (view v uses entry v % len), got {value!r}")


def _range_rule(ok, text):
    return checks.Rule(lambda v: len(v) == 2 and ok(*v), "{field} must be a pair (low, high) with " + text
                       + ", got {value!r}")


PROBABILITIES = _per_view_rule(lambda p: 0 <= p <= 1, "a probability in [0, 1]")
STRENGTHS = _per_view_rule(lambda s: s >= 0, "a strength >= 0")
HUES = _per_view_rule(lambda h: 0 <= h <= 0.5, "a hue shift in [0, 0.5] (of the hue circle)")
RANGE_RULES = dict(crop_scale=_range_rule(lambda lo, hi: 0 < lo <= hi <= 1, "0 < low <= high <= 1"),
                   crop_ratio=_range_rule(lambda lo, hi: 0 < lo <= hi, "0 < low <= high"),
                   blur_sigma=_range_rule(lambda lo, hi: 0 < lo <= hi, "0 < low <= high (pixels)"))


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Strengths of each augmentation (a field at zero disables it)."""

    num_views: int = 2
    recipe: str = "digits"  # a name in RECIPES
    # The digits recipe's ops.
    max_zoom: float = 0.15  # scale drawn from [1 - max_zoom, 1 + max_zoom]
    max_rotation_deg: float = 15.0
    max_shear: float = 0.15
    max_shift: float = 1.0  # pixels
    brightness: float = 0.2  # additive, in units of the [0, 1] intensity range
    contrast: float = 0.3  # multiplicative, around the image mean
    noise_std: float = 0.05
    cutout_size: int = 3  # side of the zeroed square, pixels
    cutout_prob: float = 0.5
    # The simclr / byol ops (module docstring). PER_VIEW fields: a tuple (or a number: every view).
    crop_scale: tuple = (0.08, 1.0)  # area fraction of the image
    crop_ratio: tuple = (3 / 4, 4 / 3)  # width / height, sampled log-uniformly
    flip_prob: tuple = ()
    jitter_prob: tuple = ()
    jitter_brightness: tuple = ()
    jitter_contrast: tuple = ()
    jitter_saturation: tuple = ()
    jitter_hue: tuple = ()
    grayscale_prob: tuple = ()
    blur_prob: tuple = ()
    blur_sigma: tuple = (0.1, 2.0)  # pixels
    blur_kernel_frac: float = 0.1  # kernel side / image height
    solarize_prob: tuple = ()
    solarize_threshold: float = 0.5

    def __post_init__(self):
        checks.check_fields(dataclasses.asdict(self), "augment.", {"recipe": checks.one_of(tuple(RECIPES))})
        settings = {**VIEW_DEFAULTS, **RECIPES[self.recipe].settings}
        for name in (*PER_VIEW, *RANGE_RULES):
            value = _as_tuple(getattr(self, name))
            if name in PER_VIEW and value == ():
                value = _as_tuple(settings[name])
            object.__setattr__(self, name, value)
        scalars = [f.name for f in dataclasses.fields(self) if f.name not in (*PER_VIEW, *RANGE_RULES, "recipe")]
        rules = dict.fromkeys(scalars, checks.NON_NEGATIVE)
        rules.update(num_views=checks.AT_LEAST_ONE, max_zoom=checks.BELOW_ONE, contrast=checks.BELOW_ONE,
                     cutout_prob=checks.PROBABILITY, blur_kernel_frac=checks.PROBABILITY,
                     solarize_threshold=checks.PROBABILITY, **RANGE_RULES)
        rules.update({name: PROBABILITIES for name in PER_VIEW if name.endswith("_prob")})
        rules.update(jitter_brightness=STRENGTHS, jitter_contrast=STRENGTHS, jitter_saturation=STRENGTHS,
                     jitter_hue=HUES)
        checks.check_fields(dataclasses.asdict(self), "augment.", rules)

    def for_view(self, view: int) -> AugmentConfig:
        """This config as view `view` sees it: each PER_VIEW field is its entry `view % len` (a float)."""
        out = copy.copy(self)
        for name in PER_VIEW:
            values = getattr(self, name)
            object.__setattr__(out, name, values[view % len(values)])
        return out

    def check_image(self, shape) -> None:
        """Raise ValueError when a strength does not fit images of `shape` [H, W, C]."""
        if self.cutout_size >= min(shape[:2]):
            raise ValueError(f"config.augment.cutout_size={self.cutout_size} must be smaller than the images' "
                             f"side ({shape[0]} x {shape[1]}): it would blank the whole image")
        colour = {"color_jitter", "grayscale"} & {op for ops in RECIPES[self.recipe].views for op in ops}
        if colour and shape[-1] not in (1, 3):
            raise ValueError(f"config.augment.recipe={self.recipe!r} uses {', '.join(sorted(colour))}, which need "
                             f"RGB or one-channel images, got {shape[-1]} channels")


def _as_tuple(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


# ---------------------------------------------------------------------------------------- digits ops


def _affine_matrix(key: jax.Array, cfg: AugmentConfig, height: int, width: int):
    """Input coordinates = matrix @ output coordinates + offset, for (row, col, channel)."""
    k_zoom, k_rot, k_shear, k_shift = jax.random.split(key, 4)
    zoom = 1.0 + jax.random.uniform(k_zoom, (), minval=-cfg.max_zoom, maxval=cfg.max_zoom)
    angle = jnp.deg2rad(cfg.max_rotation_deg) * jax.random.uniform(k_rot, (), minval=-1.0, maxval=1.0)
    shear = jax.random.uniform(k_shear, (), minval=-cfg.max_shear, maxval=cfg.max_shear)
    shift = jax.random.uniform(k_shift, (2,), minval=-cfg.max_shift, maxval=cfg.max_shift)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    # Output -> input: undo the zoom (divide), rotate and shear.
    linear = jnp.array([[cos, -sin], [sin, cos]]) @ jnp.array([[1.0, shear], [0.0, 1.0]]) / zoom
    centre = jnp.array([(height - 1) / 2, (width - 1) / 2])
    offset = centre - linear @ centre - shift
    matrix = jnp.eye(3).at[:2, :2].set(linear)
    return matrix, jnp.concatenate([offset, jnp.zeros(1)])


def _affine(keys, x, cfg: AugmentConfig):
    matrix, offset = _affine_matrix(keys[0], cfg, *x.shape[:2])
    return dm_pix.affine_transform(x, matrix, offset=offset, order=1, mode="constant", cval=0.0)


def _intensity(keys, x, cfg: AugmentConfig):
    brightness = jax.random.uniform(keys[0], (), minval=-cfg.brightness, maxval=cfg.brightness)
    contrast = 1.0 + jax.random.uniform(keys[1], (), minval=-cfg.contrast, maxval=cfg.contrast)
    mean = x.mean()
    return (x - mean) * contrast + mean + brightness


def _noise(keys, x, cfg: AugmentConfig):
    return x + cfg.noise_std * jax.random.normal(keys[0], x.shape)


def _cutout(keys, x, cfg: AugmentConfig):
    if cfg.cutout_size <= 0 or cfg.cutout_prob <= 0:
        return x
    height, width, _ = x.shape
    corner = jax.random.randint(keys[0], (2,), 0, jnp.array([height, width]))
    rows = jnp.arange(height)[:, None, None]
    cols = jnp.arange(width)[None, :, None]
    inside = ((rows >= corner[0]) & (rows < corner[0] + cfg.cutout_size)
              & (cols >= corner[1]) & (cols < corner[1] + cfg.cutout_size))
    return jnp.where(inside & jax.random.bernoulli(keys[1], cfg.cutout_prob), 0.0, x)


# ---------------------------------------------------------------------------------- simclr / byol ops

CROP_TRIES = 10


def random_crop_box(key: jax.Array, height: int, width: int, scale, ratio) -> jax.Array:
    """(top, left, box height, box width) of an Inception-style crop (module docstring, `crop`), floats."""
    k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
    area = height * width * jax.random.uniform(k_area, (CROP_TRIES,), minval=scale[0], maxval=scale[1])
    aspect = jnp.exp(jax.random.uniform(k_ratio, (CROP_TRIES,), minval=math.log(ratio[0]),
                                        maxval=math.log(ratio[1])))
    box_w, box_h = jnp.sqrt(area * aspect), jnp.sqrt(area / aspect)
    fits = (box_h <= height) & (box_w <= width)
    first = jnp.argmax(fits)
    # No draw fits: the whole image, narrowed to the nearest ratio in range (torchvision's fallback).
    in_ratio = width / height
    fallback_w = height * ratio[1] if in_ratio > ratio[1] else width
    fallback_h = width / ratio[0] if in_ratio < ratio[0] else height
    box_h = jnp.where(fits.any(), box_h[first], fallback_h)
    box_w = jnp.where(fits.any(), box_w[first], fallback_w)
    # A fallback box is centred: u = 0.5 there.
    u_top = jnp.where(fits.any(), jax.random.uniform(k_top, ()), 0.5)
    u_left = jnp.where(fits.any(), jax.random.uniform(k_left, ()), 0.5)
    return jnp.stack([u_top * (height - box_h), u_left * (width - box_w), box_h, box_w])


def resize_box(x: jax.Array, box: jax.Array) -> jax.Array:
    """The box (top, left, height, width) of image x [H, W, C] resized to H x W, bilinear: output pixel
    centre (i + 1/2, j + 1/2) samples the input at (top + (i + 1/2) h / H, left + (j + 1/2) w / W)."""
    height, width = x.shape[:2]
    scale = jnp.array([height, width], jnp.float32) / box[2:]
    return jax.image.scale_and_translate(x, x.shape, (0, 1), scale, -box[:2] * scale, method="linear",
                                         antialias=False)


def _crop(keys, x, cfg: AugmentConfig):
    return resize_box(x, random_crop_box(keys[0], *x.shape[:2], cfg.crop_scale, cfg.crop_ratio))


def _flip(keys, x, cfg: AugmentConfig):
    if cfg.flip_prob <= 0:
        return x
    return dm_pix.random_flip_left_right(keys[0], x, probability=cfg.flip_prob)


def _maybe(key, prob: float, applied, x):
    """`applied` with probability `prob`, else x (no draw at 0 or 1)."""
    return applied if prob >= 1 else jnp.where(jax.random.bernoulli(key, prob), applied, x)


def _check_channels(x, op):
    if x.shape[-1] not in (1, 3):
        raise ValueError(f"augment op {op!r} needs RGB or one-channel images, got {x.shape[-1]} channels")


def _color_jitter(keys, x, cfg: AugmentConfig):
    """Brightness, contrast, saturation and hue jitter in a random order (module docstring).

    The order is a permutation drawn per view, so under vmap a `lax.switch` on it would evaluate every
    op at every position (and was ~5x slower on a CPU). Instead each position runs every op with that
    position's op's parameter and identity parameters for the others (delta 0, factor 1): the same
    result up to float rounding, with one HSV round trip per position (`dm_pix.rgb_to_hsv`, the formulas of
    `dm_pix.adjust_saturation` and `adjust_hue`)."""
    _check_channels(x, "color_jitter")
    k_apply, k_order, k_b, k_c, k_s, k_h = keys
    rgb = x.shape[-1] == 3

    def factor(key, strength):
        return jax.random.uniform(key, (), minval=max(0.0, 1.0 - strength), maxval=1.0 + strength)

    drawn = {"brightness": jax.random.uniform(k_b, (), minval=-cfg.jitter_brightness, maxval=cfg.jitter_brightness),
             "contrast": factor(k_c, cfg.jitter_contrast), "saturation": factor(k_s, cfg.jitter_saturation),
             "hue": jax.random.uniform(k_h, (), minval=-cfg.jitter_hue, maxval=cfg.jitter_hue)}
    strengths = {"brightness": cfg.jitter_brightness, "contrast": cfg.jitter_contrast,
                 "saturation": cfg.jitter_saturation if rgb else 0.0, "hue": cfg.jitter_hue if rgb else 0.0}
    names = [name for name, strength in strengths.items() if strength > 0]
    if cfg.jitter_prob <= 0 or not names:
        return x
    order = jax.random.permutation(k_order, len(names))
    y = x
    for position in range(len(names)):
        def param(name, identity, position=position):  # this position's op's draw, or the identity
            return jnp.where(order[position] == names.index(name), drawn[name], identity) if name in names else None

        delta, contrast = param("brightness", 0.0), param("contrast", 1.0)
        if delta is not None:
            y = dm_pix.adjust_brightness(y, delta)
        if contrast is not None:
            y = dm_pix.adjust_contrast(y, contrast)
        y = jnp.clip(y, 0.0, 1.0)
        saturation, hue = param("saturation", 1.0), param("hue", 0.0)
        if saturation is not None or hue is not None:
            y = jnp.clip(adjust_hsv(y, 0.0 if hue is None else hue, 1.0 if saturation is None else saturation),
                         0.0, 1.0)
    return _maybe(k_apply, cfg.jitter_prob, y, x)


def adjust_hsv(x: jax.Array, hue_delta, saturation_factor) -> jax.Array:
    """RGB x [..., 3] with hue H -> (H + hue_delta) mod 1 and saturation S -> clip(S saturation_factor, 0, 1)
    in HSV: `dm_pix.adjust_hue` and `dm_pix.adjust_saturation` in one round trip."""
    h, s, v = jnp.moveaxis(dm_pix.rgb_to_hsv(x), -1, 0)
    h, s = (h + hue_delta) % 1.0, jnp.clip(s * saturation_factor, 0.0, 1.0)
    return dm_pix.hsv_to_rgb(jnp.stack([h, s, v], axis=-1))


def _grayscale(keys, x, cfg: AugmentConfig):
    _check_channels(x, "grayscale")
    if cfg.grayscale_prob <= 0 or x.shape[-1] == 1:
        return x
    return _maybe(keys[0], cfg.grayscale_prob, dm_pix.rgb_to_grayscale(x, keep_dims=True), x)


def blur_radius(cfg: AugmentConfig, height: int) -> int:
    """Half the kernel side: the kernel is 2 r + 1 pixels, r = floor(blur_kernel_frac * height / 2)."""
    return int(cfg.blur_kernel_frac * height / 2)


def gaussian_kernel(sigma: jax.Array, radius: int) -> jax.Array:
    """g_k = exp(-k^2 / (2 sigma^2)) / sum_j exp(-j^2 / (2 sigma^2)), k = -radius..radius (dm-pix's kernel)."""
    k = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    g = jnp.exp(-k**2 / (2.0 * sigma**2))
    return g / g.sum()


def gaussian_blur(x: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
    """x [H, W, C] convolved with the separable kernel g g^T, the image padded by reflection.

    Written as a sum of 2 r + 1 shifted copies per axis rather than with `dm_pix.gaussian_blur`: under
    vmap, dm-pix's convolution with a kernel per image (sigma is drawn per view) becomes a grouped
    convolution that took ~150 ms per 224 x 224 image on a CPU, against a few ms here."""
    g = gaussian_kernel(sigma, radius)
    height, width = x.shape[:2]
    y = jnp.pad(x, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    y = sum(g[k] * y[k:k + height] for k in range(2 * radius + 1))
    return sum(g[k] * y[:, k:k + width] for k in range(2 * radius + 1))


def _blur(keys, x, cfg: AugmentConfig):
    radius = blur_radius(cfg, x.shape[0])
    if cfg.blur_prob <= 0 or radius == 0:
        return x
    sigma = jax.random.uniform(keys[1], (), minval=cfg.blur_sigma[0], maxval=cfg.blur_sigma[1])
    return _maybe(keys[0], cfg.blur_prob, gaussian_blur(x, sigma, radius), x)


def _solarize(keys, x, cfg: AugmentConfig):
    if cfg.solarize_prob <= 0:
        return x
    return _maybe(keys[0], cfg.solarize_prob, dm_pix.solarize(x, cfg.solarize_threshold), x)


@dataclasses.dataclass(frozen=True)
class Op:
    """`fn(keys, image, cfg) -> image` on one float image [H, W, C], with `num_keys` PRNG keys of its own;
    `cfg` is the config as this view sees it (`AugmentConfig.for_view`: PER_VIEW fields are floats)."""

    fn: Callable
    num_keys: int = 1


@dataclasses.dataclass(frozen=True)
class Recipe:
    """`views`: one tuple of op names per view (view v uses `views[v % len(views)]`); `settings`: the
    values of PER_VIEW fields this recipe uses where the config leaves them at ()."""

    views: tuple[tuple[str, ...], ...]
    settings: dict = dataclasses.field(default_factory=dict)


OPS: dict[str, Op] = {"affine": Op(_affine), "intensity": Op(_intensity, 2), "noise": Op(_noise),
                      "cutout": Op(_cutout, 2), "crop": Op(_crop), "flip": Op(_flip),
                      "color_jitter": Op(_color_jitter, 6), "grayscale": Op(_grayscale), "blur": Op(_blur, 2),
                      "solarize": Op(_solarize)}
RECIPES: dict[str, Recipe] = {}


def register_op(name: str, fn: Callable, num_keys: int = 1) -> None:
    OPS[name] = Op(fn, num_keys)


def register_recipe(name: str, views, settings=None) -> None:
    """`views`: one list of op names per view (view v uses `views[v % len(views)]`); `settings`: values of
    PER_VIEW fields (a number or a per-view tuple) used where the config leaves the field at ()."""
    views = tuple(tuple(ops) for ops in views)
    unknown = sorted({op for ops in views for op in ops} - set(OPS))
    if not views or unknown:
        raise ValueError(f"recipe {name!r} needs at least one view's ops, each one of {', '.join(OPS)}"
                         + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    settings = dict(settings or {})
    if set(settings) - set(PER_VIEW):
        raise ValueError(f"recipe {name!r}: settings {sorted(set(settings) - set(PER_VIEW))} are not per-view "
                         f"fields ({', '.join(PER_VIEW)})")
    RECIPES[name] = Recipe(views, {k: _as_tuple(v) for k, v in settings.items()})


SIMCLR_OPS = ("crop", "flip", "color_jitter", "grayscale", "blur", "solarize")
register_recipe("digits", [("affine", "intensity", "noise", "cutout")])
register_recipe("simclr", [SIMCLR_OPS])  # VIEW_DEFAULTS: SimCLR's ImageNet settings
# SimCLR on CIFAR-10 (appendix B.9): colour strength s = 0.5, no blur at 32 x 32.
register_recipe("simclr_cifar", [SIMCLR_OPS], dict(jitter_brightness=0.4, jitter_contrast=0.4,
                                                   jitter_saturation=0.4, jitter_hue=0.1, blur_prob=0.0))
# BYOL (Grill et al. 2020, table 6): the two views differ in blur and solarisation.
register_recipe("byol", [SIMCLR_OPS], dict(jitter_brightness=0.4, jitter_contrast=0.4, jitter_saturation=0.2,
                                           jitter_hue=0.1, blur_prob=(1.0, 0.1), solarize_prob=(0.0, 0.2)))


def augment_image(key: jax.Array, image: jax.Array, cfg: AugmentConfig, ops=None) -> jax.Array:
    """One random view of one float image [H, W, C] with values in [0, 1]: `ops` (default: the recipe's
    first view's) in order, each with its own keys of `jax.random.split(key, total keys)`, then clipped.
    `cfg` is the config as the view sees it (`for_view`); a config with per-view tuples is read as view 0."""
    ops = RECIPES[cfg.recipe].views[0] if ops is None else ops
    if isinstance(cfg.blur_prob, tuple):
        cfg = cfg.for_view(0)
    keys = jax.random.split(key, sum(OPS[op].num_keys for op in ops))
    x, used = image, 0
    for name in ops:
        op = OPS[name]
        x = op.fn(keys[used:used + op.num_keys], x, cfg)
        used += op.num_keys
    return jnp.clip(x, 0.0, 1.0)


def augment_views(key: jax.Array, images: jax.Array, example_ids: jax.Array,
                  cfg: AugmentConfig) -> jax.Array:
    """V views of every image: [B, H, W, C] in [0, 1] -> [B, V, H, W, C].

    Args:
      key: the step's augmentation key.
      images: float images in [0, 1].
      example_ids: [B] integers identifying each row independently of sharding (its global position).
      cfg: augmentation strengths.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
    if example_ids.shape != images.shape[:1]:
        raise ValueError(f"example_ids must have shape {images.shape[:1]}, got {example_ids.shape}")
    recipe = RECIPES[cfg.recipe].views
    groups: dict[tuple, list[int]] = {}  # views with the same ops and settings: one vmapped program
    for v in range(cfg.num_views):
        groups.setdefault((recipe[v % len(recipe)], cfg.for_view(v)), []).append(v)

    def one_example(example_id, image):
        example_key = jax.random.fold_in(key, example_id)
        out = {}
        for (ops, view_cfg), views in groups.items():
            view_keys = jax.vmap(lambda v: jax.random.fold_in(example_key, v))(jnp.array(views))
            group = jax.vmap(functools.partial(augment_image, image=image, cfg=view_cfg, ops=ops))(view_keys)
            if len(groups) == 1:
                return group
            out.update({v: group[i] for i, v in enumerate(views)})
        return jnp.stack([out[v] for v in range(cfg.num_views)])

    return jax.vmap(one_example)(example_ids, images)
