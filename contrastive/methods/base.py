"""The method protocol: one object per view-based method, found by name in `contrastive.methods.REGISTRY`.

A method declares what its step needs (`Needs`) and implements four hooks; the runner and the train step
call these and name no method:

* `check(config, devices)`: raise ConfigError for settings the method cannot run with (before any compute).
* `init_state(model, config, rng) -> dict`: what the method keeps beside the parameters (an EMA target, a
  key queue, a running correlation); it is part of the train state and of every checkpoint.
* `forward(ctx, model, target, state, views, batch, key) -> (loss, metrics, out)`: the loss of the online
  `model` (differentiated) on the augmented global batch `views` [B, V, H, W, C]; `target` is the EMA
  network (or None), `state` the method's state, `batch` the batch's other fields (`label`, `index`),
  `key` the loss's own PRNG key. The encoders run under `jax.jit` on the global batch (BatchNorm statistics
  are global); the loss runs under `jax.shard_map` with `axis_name="data"` (`ctx.on_mesh`). `out` holds
  what `update_state` writes back.
* `update_state(ctx, state, out, params, step) -> (state, metrics)`: after the optimizer update, e.g. the
  EMA step of the target, the queue write, the correlation update.
* `per_sample_tables(model, config) -> {name: (row shape, dtype, fill)}`: per-sample state (e.g. SogCLR's
  running estimate of each anchor's negative mass). The step keeps each as `state["per_sample"][name]`,
  one row per training example (row i: the example at position i of the train split, `batch["index"]`),
  sharded over the devices by rows and checkpointed with the rest; `forward` reads the batch's rows with
  `read_rows` and `update_state` writes them back with `write_rows`. Rows are padded to a multiple of
  `TABLE_ROW_MULTIPLE`, so a checkpoint restores on any device count that divides it.

`ctx` (`Context`) carries the config, the mesh and the loss with its config keywords bound.

A method's own settings (the EMA momentum, the queue size, DirectPred's rates) live in `config.method`,
declared with their defaults by `default_settings()` and read with `settings(config)`; a config file
starts from `configs.common.method_settings(name)`, and a field the method does not have is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from contrastive.train import momentum
from contrastive.train.config import ConfigError, loss_keywords

ROWS, SAME = P("data"), P()
TABLE_ROW_MULTIPLE = 128
# The EMA target's momentum: `momentum` at step 0, rising along a cosine to `momentum_end` (BYOL); equal
# values give a constant momentum (MoCo).
EMA_SETTINGS = {"momentum": 0.996, "momentum_end": 1.0}


@dataclasses.dataclass(frozen=True)
class Needs:
    """What a method's step needs besides the online encoder and head."""

    views: int | None = 2  # augmented views per example; None: any number >= 2
    labels: bool = False  # batch["label"] reaches the loss (SupCon)
    index: bool = False  # batch["index"], each row's position in the train split (per-sample state)
    target: bool = False  # an EMA target network
    predictor: bool = False  # a predictor on the online projections (an MLP or DirectPred's closed form)
    queue: bool = False  # a queue of past keys
    key: bool = False  # a PRNG `key` for the loss's own sampling (W-MSE groups, MoCHi, FT)


@dataclasses.dataclass(frozen=True)
class Context:
    config: object
    mesh: jax.sharding.Mesh
    loss: Callable  # the method's loss with its config.loss keywords bound

    def on_mesh(self, fn, *in_specs):
        """`fn` under `jax.shard_map` over the mesh, returning (loss, metrics) replicated."""
        return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=(SAME, SAME))


def flatten_views(views: jax.Array) -> jax.Array:
    """[B, V, ...] -> [B * V, ...], example-major (the rows of one example's views are adjacent)."""
    return views.reshape(views.shape[0] * views.shape[1], *views.shape[2:])


def per_view(z: jax.Array, batch: int) -> jax.Array:
    return z.reshape(batch, -1, z.shape[-1])


def encode_views(fn, x: jax.Array, config) -> jax.Array:
    """`fn` (the online or target network, or the predictor) on every view of `x` [B, V, ...] -> [B, V, D].

    By default one call on all B * V rows, so a BatchNorm layer's statistics pool every view (SimCLR's
    reference code). With `config.model.batch_norm_per_view`, one call per view, so each view's batch is
    normalised on its own, as the BYOL reference code and solo-learn forward the views.
    """
    if config.model.get("batch_norm_per_view", False):
        return jnp.stack([fn(x[:, v]) for v in range(x.shape[1])], axis=1)
    return per_view(fn(flatten_views(x)), x.shape[0])


def _merged_settings(defaults: dict, given, prefix: str, method: str) -> dict:
    if given is not None and not hasattr(given, "keys"):
        raise ConfigError(f"config.{prefix.rstrip('.')}={given!r} must be a group of settings: "
                          f"{', '.join(sorted(defaults)) or 'none'}")
    out = {}
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        valid = ", ".join(sorted(defaults)) or "none"
        raise ConfigError(f"config.{prefix}{unknown[0]} is not a setting of method {method!r}; its settings: {valid}")
    for key, default in defaults.items():
        value = given.get(key, default)
        out[key] = _merged_settings(default, value, f"{prefix}{key}.", method) if isinstance(default, dict) else value
    return out


def table_rows(num_examples: int) -> int:
    """Rows of a per-sample table: `num_examples` padded to a multiple of TABLE_ROW_MULTIPLE."""
    return -(-num_examples // TABLE_ROW_MULTIPLE) * TABLE_ROW_MULTIPLE


def read_rows(table: jax.Array, index: jax.Array) -> jax.Array:
    """The rows of a per-sample table for the batch's examples `index` [B] (a gather across devices)."""
    return table[index]


def write_rows(table: jax.Array, index: jax.Array, rows: jax.Array) -> jax.Array:
    """`table` with rows `index` replaced by `rows`. A batch that straddles two epochs can hold one example
    twice (once from each epoch's permutation); then one of its two rows is written, which one unspecified."""
    return table.at[index].set(rows.astype(table.dtype))


class Method:
    """A view-based method. Subclasses set `name`, `needs`, `loss_fn` and implement `forward`."""

    name: str = ""
    description: str = ""
    needs: Needs = Needs()
    loss_fn: Callable = None  # the pure loss of contrastive.losses
    grad_cache: bool = False  # GradCache applies: the loss sees only the online projections
    nonfinite_hint: str = ""  # what to change when the loss becomes non-finite

    # -- config ---------------------------------------------------------------------------------
    def default_settings(self) -> dict:
        """The fields of `config.method` at their defaults: the EMA's for a method with a target network;
        subclasses add theirs."""
        return {"ema": dict(EMA_SETTINGS)} if self.needs.target else {}

    def settings(self, config) -> dict:
        """`config.method` over `default_settings()`; ConfigError for a field the method does not have."""
        return _merged_settings(self.default_settings(), config.get("method"), "method.", self.name)

    def loss_kwargs(self, config) -> dict:
        """`config.loss` less `name`, checked against the loss's keyword arguments (less those the step passes)."""
        return loss_keywords(self.loss_fn, config.loss, internal=("key",) if self.needs.key else ())

    def bound_loss(self, config) -> Callable:
        kwargs = self.loss_kwargs(config)
        return lambda *args, **more: self.loss_fn(*args, **kwargs, **more)

    def check(self, config, devices: int) -> None:
        """The views, the loss's keywords, the predictor, EMA and queue settings; subclasses add their own."""
        num_views, name = config.augment.num_views, self.name
        if (self.needs.views is not None and num_views != self.needs.views) or num_views < 2:
            need = self.needs.views if self.needs.views is not None else "at least 2"
            raise ConfigError(f"loss {name!r} needs augment.num_views={need}, got {num_views}")
        self.loss_kwargs(config)
        settings = self.settings(config)
        dp, hidden = settings.get("directpred", {}).get("enabled", False), tuple(config.model.predictor_hidden)
        if self.needs.predictor and not (hidden or dp) or (hidden and dp):
            raise ConfigError(f"loss {name!r} needs exactly one predictor: an MLP (model.predictor_hidden, e.g. "
                              f"(128,)) or DirectPred (method.directpred.enabled=True); got predictor_hidden="
                              f"{hidden}, method.directpred.enabled={dp}")
        if not self.needs.predictor and hidden:
            raise ConfigError(f"loss {name!r} has no predictor: set model.predictor_hidden=()")
        if self.needs.target:
            ema = settings["ema"]
            try:  # the schedule's own range check, at step 0
                momentum.ema_momentum(0, 1, ema["momentum"], ema["momentum_end"])
            except ValueError as e:
                raise ConfigError(f"config.method.ema: {e} (config.method.ema.momentum={ema['momentum']}, "
                                  f"config.method.ema.momentum_end={ema['momentum_end']})") from None

    # -- state ----------------------------------------------------------------------------------
    def per_sample_tables(self, model, config) -> dict:
        """{name: (row shape, dtype, fill value)} of the per-sample tables; none by default."""
        del model, config
        return {}

    def init_state(self, model, params, config, rng: jax.Array) -> dict:
        """The method's state at step 0; the EMA target starts as a copy of the online parameters (copies:
        the step donates both). Subclasses add theirs to this."""
        del model, config, rng
        return {"target": jax.tree.map(jnp.copy, params)} if self.needs.target else {}

    def update_state(self, ctx: Context, state: dict, out: dict, params, step) -> tuple[dict, dict]:
        """EMA step of the target (BYOL's cosine momentum schedule from method.ema.momentum to momentum_end)."""
        del out
        if not self.needs.target:
            return state, {}
        ema = self.settings(ctx.config)["ema"]
        m = momentum.ema_momentum(step - 1, ctx.config.num_steps, ema["momentum"], ema["momentum_end"])
        return {**state, "target": momentum.ema_update(state["target"], params, m)}, {"ema_momentum": m}

    # -- step -----------------------------------------------------------------------------------
    def forward(self, ctx: Context, model, target, state: dict, views: jax.Array, batch: dict, key: jax.Array):
        raise NotImplementedError
