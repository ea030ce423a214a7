"""From `config.loss` to a function of the model's outputs, for the two method families.

* views: the contrastive losses (SimCLR family) as `objective(z [b, V, D], labels [b], *, axis_name)`.
  Each loss has the signature its paper suggests (two views, or [N, V, D] with labels); an objective
  adapts the [b, V, D] projections. BYOL, SimSiam, W-MSE and MoCo need more than the projections (a
  target, a predictor, a queue): `make_view_loss` returns them with their `methods.Method`.
* image_text (CLIP family): `objective(image [b, D], text [b, D], logit_scale, logit_bias, *, axis_name)`;
  the scale and bias are the dual encoder's learned parameters, so `config.loss` may not set them.

`config.loss.name` picks the loss and, through it, the family; every other field of `config.loss` is
passed to the loss as a keyword argument and must be one it accepts.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import jax

from contrastive import losses
from contrastive.train.config import ConfigError
from contrastive.train.methods import METHODS, Method

Objective = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def _two_views(loss_fn):
    def objective(z, labels, *, axis_name, **kwargs):
        del labels
        return loss_fn(z[:, 0], z[:, 1], axis_name=axis_name, **kwargs)

    return objective


def _views_and_labels(loss_fn):
    def objective(z, labels, *, axis_name, **kwargs):
        return loss_fn(z, labels, axis_name=axis_name, **kwargs)

    return objective


def _image_text(loss_fn, with_bias):
    def objective(image, text, logit_scale, logit_bias, *, axis_name, **kwargs):
        extra = {"logit_bias": logit_bias} if with_bias else {}
        return loss_fn(image, text, logit_scale=logit_scale, axis_name=axis_name, **extra, **kwargs)

    return objective


# contrastive losses: name -> the adapter from [b, V, D] projections (views needed: methods.METHODS)
_ADAPTERS = {
    "nt_xent": _two_views,
    "dcl": _two_views,
    "supcon": _views_and_labels,
}


# name -> whether the loss takes a learned bias (SigLIP) besides the learned scale
IMAGE_TEXT_LOSSES = {"clip": False, "siglip": True, "infoloob": False}
LEARNED = ("logit_scale", "logit_bias")  # model parameters, never config values
FAMILIES = ("views", "image_text")


def available() -> tuple[str, ...]:
    return tuple(name for name in METHODS if hasattr(losses, name))


def loss_family(name: str) -> str:
    """'views' or 'image_text', the family whose model, data and step a loss needs."""
    if name in IMAGE_TEXT_LOSSES:
        return "image_text"
    if name in available():
        return "views"
    raise ConfigError(f"loss.name={name!r} is not one of {', '.join((*available(), *IMAGE_TEXT_LOSSES))}")


def _loss_kwargs(loss_fn, loss_cfg, exclude=(), internal=()) -> dict:
    """The fields of `config.loss` other than `name`, checked against the loss's keyword arguments
    (less `exclude`, the learned ones, and `internal`, those the step passes)."""
    name = loss_cfg.name
    params = inspect.signature(loss_fn).parameters
    accepted = {p for p, v in params.items() if v.kind == inspect.Parameter.KEYWORD_ONLY}
    accepted -= {"axis_name", *exclude, *internal}
    kwargs = {k: v for k, v in loss_cfg.items() if k != "name"}
    learned = sorted(set(kwargs) & set(exclude))
    if learned:
        raise ConfigError(f"config.loss.{learned[0]} is a learned parameter of the dual encoder, not a loss setting; "
                          "set its initial value with config.model.logit_scale_init / config.model.logit_bias_init")
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join('config.loss.' + k for k in unknown)} for "
                          f"loss {name!r}; valid keys: name, {', '.join(sorted(accepted))}")
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()}


def make_view_loss(loss_cfg, num_views: int) -> tuple[Method, Callable]:
    """(method, loss) for a view-based `config.loss`, checked before any compute: for contrastive losses
    the objective `(z [b, V, D], labels, *, axis_name)`, otherwise the loss with its config bound (the
    step passes `key` to the losses that sample)."""
    name = loss_cfg.name
    if name not in available():
        raise ConfigError(f"loss.name={name!r} is not one of {', '.join(available())}")
    method = METHODS[name]
    if (method.views is not None and num_views != method.views) or num_views < 2:
        need = method.views if method.views is not None else "at least 2"
        raise ConfigError(f"loss {name!r} needs augment.num_views={need}, got {num_views}")
    loss_fn = getattr(losses, name)
    kwargs = _loss_kwargs(loss_fn, loss_cfg, internal=("key",) if method.keyed else ())
    if method.kind == "contrastive":
        return method, functools.partial(_ADAPTERS[name](loss_fn), **kwargs)
    return method, functools.partial(loss_fn, **kwargs)


def make_image_text_objective(loss_cfg) -> Objective:
    """`objective(image, text, logit_scale, logit_bias, *, axis_name)` for an image-text `config.loss`."""
    name = loss_cfg.name
    if name not in IMAGE_TEXT_LOSSES:
        raise ConfigError(f"loss.name={name!r} is not an image-text loss; choose one of "
                          f"{', '.join(IMAGE_TEXT_LOSSES)}")
    loss_fn = getattr(losses, name)
    return functools.partial(_image_text(loss_fn, IMAGE_TEXT_LOSSES[name]), **_loss_kwargs(loss_fn, loss_cfg, LEARNED))
