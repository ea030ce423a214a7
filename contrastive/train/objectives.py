"""From `config.loss` to a function of the model's projections: (z [b, V, D], labels [b]) -> loss.

Each loss in `contrastive.losses` has the signature its paper suggests (two views, or [N, V, D] with
labels); an objective adapts the runner's [b, V, D] projections to it. `config.loss.name` picks the loss;
every other field of `config.loss` is passed to it as a keyword argument and must be one it accepts.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import jax

from contrastive import losses
from contrastive.train.config import ConfigError

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


# name -> (adapter, number of views it needs: an int, or None for any number >= 2)
_ADAPTERS = {
    "nt_xent": (_two_views, 2),
    "dcl": (_two_views, 2),
    "supcon": (_views_and_labels, None),
}


def available() -> tuple[str, ...]:
    return tuple(name for name in _ADAPTERS if hasattr(losses, name))


def make_objective(loss_cfg, num_views: int) -> Objective:
    """`objective(z, labels, *, axis_name)` for `config.loss`, checked before any compute."""
    name = loss_cfg.name
    if name not in available():
        raise ConfigError(f"loss.name={name!r} is not one of {', '.join(available())}")
    adapter, views = _ADAPTERS[name]
    if (views is not None and num_views != views) or num_views < 2:
        need = views if views is not None else "at least 2"
        raise ConfigError(f"loss {name!r} needs augment.num_views={need}, got {num_views}")
    loss_fn = getattr(losses, name)
    params = inspect.signature(loss_fn).parameters
    accepted = {p for p, v in params.items() if v.kind == inspect.Parameter.KEYWORD_ONLY} - {"axis_name"}
    kwargs = {k: v for k, v in loss_cfg.items() if k != "name"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join('config.loss.' + k for k in unknown)} for "
                          f"loss {name!r}; valid keys: name, {', '.join(sorted(accepted))}")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()}
    return functools.partial(adapter(loss_fn), **kwargs)
