"""From `config.loss` to what the step computes, for the two method families.

* views: a method of `contrastive.methods` (one object per method, in its registry by name), which checks
  its config, keeps its state and computes its loss from the augmented views (`view_method`).
* image_text (CLIP family): `objective(image [b, D], text [b, D], logit_scale, logit_bias, *, axis_name)`;
  the scale and bias are the dual encoder's learned parameters, so `config.loss` may not set them.

`config.loss.name` picks the loss and, through it, the family; every other field of `config.loss` is
passed to the loss as a keyword argument and must be one it accepts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax

from contrastive import losses, methods
from contrastive.train.config import ConfigError, loss_keywords

Objective = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
DEFAULT_NONFINITE_HINT = "Lower optimizer.lr, enable optimizer.grad_clip_norm, or raise loss.temperature."


def _image_text(loss_fn, with_bias):
    def objective(image, text, logit_scale, logit_bias, *, axis_name, **kwargs):
        extra = {"logit_bias": logit_bias} if with_bias else {}
        return loss_fn(image, text, logit_scale=logit_scale, axis_name=axis_name, **extra, **kwargs)

    return objective


# name -> whether the loss takes a learned bias (SigLIP) besides the learned scale
IMAGE_TEXT_LOSSES = {"clip": False, "siglip": True, "infoloob": False}
LEARNED = ("logit_scale", "logit_bias")  # model parameters, never config values
FAMILIES = ("views", "image_text")


def available() -> tuple[str, ...]:
    return tuple(methods.REGISTRY)


def view_method(name: str) -> methods.Method:
    """The registered view-based method `name` (ConfigError listing the registered ones otherwise)."""
    try:
        return methods.get(name)
    except KeyError:
        raise ConfigError(f"loss.name={name!r} is not one of {', '.join(available())}") from None


def loss_family(name: str) -> str:
    """'views' or 'image_text', the family whose model, data and step a loss needs."""
    if name in IMAGE_TEXT_LOSSES:
        return "image_text"
    if name in available():
        return "views"
    raise ConfigError(f"loss.name={name!r} is not one of {', '.join((*available(), *IMAGE_TEXT_LOSSES))}")


def make_image_text_objective(loss_cfg) -> Objective:
    """`objective(image, text, logit_scale, logit_bias, *, axis_name)` for an image-text `config.loss`."""
    name = loss_cfg.name
    if name not in IMAGE_TEXT_LOSSES:
        raise ConfigError(f"loss.name={name!r} is not an image-text loss; choose one of "
                          f"{', '.join(IMAGE_TEXT_LOSSES)}")
    loss_fn = getattr(losses, name)
    return functools.partial(_image_text(loss_fn, IMAGE_TEXT_LOSSES[name]), **loss_keywords(loss_fn, loss_cfg, LEARNED))
