"""On-device augmentation: V random views per image, inside the jitted train step.

Every (image, view) pair draws from its own RNG stream, `fold_in(fold_in(key, example_id), view)`, where
`example_id` is the example's global position in the batch. The views therefore do not depend on how the
batch is sharded: one device and eight devices see exactly the same augmented pixels.

A recipe (`config.augment.recipe`, one entry of `RECIPES`) is a list of op names per view: view v applies
`recipe[v % len(recipe)]` in order, each op one entry of `OPS` (a function of its PRNG keys, the image and
the `AugmentConfig` strengths), then clips to [0, 1]. `register_op` and `register_recipe` add one.

The `digits` recipe suits small grayscale images such as the 8x8 digits, where SimCLR's colour and large
crops would destroy the class, the same for every view: a random affine map (zoom, rotation, shear and
translation, applied with bilinear sampling, `dm_pix.affine_transform`), then intensity jitter
(brightness and contrast), Gaussian pixel noise and cutout (DeVries & Taylor, 2017). Every strength is a
parameter; zero turns it off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import dm_pix
import jax
import jax.numpy as jnp

from contrastive import checks


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Strengths of each augmentation (a field at zero disables it)."""

    num_views: int = 2
    recipe: str = "digits"  # a name in RECIPES
    max_zoom: float = 0.15  # scale drawn from [1 - max_zoom, 1 + max_zoom]
    max_rotation_deg: float = 15.0
    max_shear: float = 0.15
    max_shift: float = 1.0  # pixels
    brightness: float = 0.2  # additive, in units of the [0, 1] intensity range
    contrast: float = 0.3  # multiplicative, around the image mean
    noise_std: float = 0.05
    cutout_size: int = 3  # side of the zeroed square, pixels
    cutout_prob: float = 0.5

    def __post_init__(self):
        rules = {f.name: checks.NON_NEGATIVE for f in dataclasses.fields(self) if f.name != "recipe"}
        rules.update(num_views=checks.AT_LEAST_ONE, max_zoom=checks.BELOW_ONE, contrast=checks.BELOW_ONE,
                     cutout_prob=checks.PROBABILITY, recipe=checks.one_of(tuple(RECIPES)))
        checks.check_fields(dataclasses.asdict(self), "augment.", rules)

    def check_image(self, shape) -> None:
        """Raise ValueError when a strength does not fit images of `shape` [H, W, C]."""
        if self.cutout_size >= min(shape[:2]):
            raise ValueError(f"config.augment.cutout_size={self.cutout_size} must be smaller than the images' "
                             f"side ({shape[0]} x {shape[1]}): it would blank the whole image")


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


@dataclasses.dataclass(frozen=True)
class Op:
    """`fn(keys, image, cfg) -> image` on one float image [H, W, C], with `num_keys` PRNG keys of its own."""

    fn: Callable
    num_keys: int = 1


OPS: dict[str, Op] = {"affine": Op(_affine), "intensity": Op(_intensity, 2), "noise": Op(_noise),
                      "cutout": Op(_cutout, 2)}
RECIPES: dict[str, tuple[tuple[str, ...], ...]] = {"digits": (("affine", "intensity", "noise", "cutout"),)}


def register_op(name: str, fn: Callable, num_keys: int = 1) -> None:
    OPS[name] = Op(fn, num_keys)


def register_recipe(name: str, views) -> None:
    """`views`: one list of op names per view (view v uses `views[v % len(views)]`)."""
    views = tuple(tuple(ops) for ops in views)
    unknown = sorted({op for ops in views for op in ops} - set(OPS))
    if not views or unknown:
        raise ValueError(f"recipe {name!r} needs at least one view's ops, each one of {', '.join(OPS)}"
                         + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    RECIPES[name] = views


def augment_image(key: jax.Array, image: jax.Array, cfg: AugmentConfig, ops=None) -> jax.Array:
    """One random view of one float image [H, W, C] with values in [0, 1]: `ops` (default: the recipe's
    first view's) in order, each with its own keys of `jax.random.split(key, total keys)`, then clipped."""
    ops = RECIPES[cfg.recipe][0] if ops is None else ops
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
    recipe = RECIPES[cfg.recipe]
    views = jnp.arange(cfg.num_views)

    def one_example(example_id, image):
        example_key = jax.random.fold_in(key, example_id)
        view_keys = jax.vmap(lambda v: jax.random.fold_in(example_key, v))(views)
        if len(recipe) == 1:  # every view the same ops: one vmapped program
            return jax.vmap(lambda k: augment_image(k, image, cfg, recipe[0]))(view_keys)
        return jnp.stack([augment_image(view_keys[v], image, cfg, recipe[v % len(recipe)])
                          for v in range(cfg.num_views)])

    return jax.vmap(one_example)(example_ids, images)
