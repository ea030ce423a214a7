"""On-device augmentation: V random views per image, inside the jitted train step.

Every (image, view) pair draws from its own RNG stream, `fold_in(fold_in(key, example_id), view)`, where
`example_id` is the example's global position in the batch. The views therefore do not depend on how the
batch is sharded: one device and eight devices see exactly the same augmented pixels.

The recipe suits small grayscale images such as the 8x8 digits, where SimCLR's colour and large crops
would destroy the class: a random affine map (zoom, rotation, shear and translation, applied with
bilinear sampling, `dm_pix.affine_transform`), then intensity jitter (brightness and contrast), Gaussian
pixel noise and cutout (DeVries & Taylor, 2017). Every strength is a parameter; zero turns it off.
"""

from __future__ import annotations

import dataclasses

import dm_pix
import jax
import jax.numpy as jnp

from contrastive import checks


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Strengths of each augmentation (a field at zero disables it)."""

    num_views: int = 2
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
        rules = {f.name: checks.NON_NEGATIVE for f in dataclasses.fields(self)}
        rules.update(num_views=checks.AT_LEAST_ONE, max_zoom=checks.BELOW_ONE, contrast=checks.BELOW_ONE,
                     cutout_prob=checks.PROBABILITY)
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


def augment_image(key: jax.Array, image: jax.Array, cfg: AugmentConfig) -> jax.Array:
    """One random view of one float image [H, W, C] with values in [0, 1]."""
    height, width, _ = image.shape
    k_affine, k_bright, k_contrast, k_noise, k_cut_pos, k_cut_on = jax.random.split(key, 6)
    matrix, offset = _affine_matrix(k_affine, cfg, height, width)
    x = dm_pix.affine_transform(image, matrix, offset=offset, order=1, mode="constant", cval=0.0)

    brightness = jax.random.uniform(k_bright, (), minval=-cfg.brightness, maxval=cfg.brightness)
    contrast = 1.0 + jax.random.uniform(k_contrast, (), minval=-cfg.contrast, maxval=cfg.contrast)
    mean = x.mean()
    x = (x - mean) * contrast + mean + brightness
    x = x + cfg.noise_std * jax.random.normal(k_noise, x.shape)

    if cfg.cutout_size > 0 and cfg.cutout_prob > 0:
        corner = jax.random.randint(k_cut_pos, (2,), 0, jnp.array([height, width]))
        rows = jnp.arange(height)[:, None, None]
        cols = jnp.arange(width)[None, :, None]
        inside = ((rows >= corner[0]) & (rows < corner[0] + cfg.cutout_size)
                  & (cols >= corner[1]) & (cols < corner[1] + cfg.cutout_size))
        cut = inside & jax.random.bernoulli(k_cut_on, cfg.cutout_prob)
        x = jnp.where(cut, 0.0, x)
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
    views = jnp.arange(cfg.num_views)

    def one_example(example_id, image):
        example_key = jax.random.fold_in(key, example_id)
        view_keys = jax.vmap(lambda v: jax.random.fold_in(example_key, v))(views)
        return jax.vmap(lambda k: augment_image(k, image, cfg))(view_keys)

    return jax.vmap(one_example)(example_ids, images)
