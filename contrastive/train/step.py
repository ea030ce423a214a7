"""The train state and the jitted train steps: view-based (a `contrastive.methods` method) and image-text.

The state is one pytree, checkpointed whole: the parameters, other model variables (BatchNorm
statistics), the optimizer state, the base PRNG key and `method_state`, the dict a method keeps beside the
parameters (`Method.init_state`: an EMA target, a key queue, DirectPred's correlation; empty for SimCLR).

Inside the step, the global batch (sharded over the mesh's `data` axis) is augmented, encoded and
projected under `jax.jit`, which partitions that work over the devices; the method's loss runs under
`jax.shard_map`, so each device holds its own rows and the loss gathers the global negatives exactly.
The step calls the method's hooks (`forward`, `update_state`) and names no method.
Both steps share the update (`_apply_gradients`) and the jit with fixed shardings (`_jit_step`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from contrastive.data.augment import AugmentConfig, augment_views
from contrastive.methods import Context, Method, flatten_views
from contrastive.methods.base import table_rows
from contrastive.parallel.gradcache import grad_cache
from contrastive.parallel.sharding import gathered, layout_sharding


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: updates applied so far, and the index of the next data batch
    params: nnx.State  # trainable parameters (nnx.Param)
    model_state: nnx.State  # other model variables (e.g. BatchNorm statistics); empty for most models
    opt_state: optax.OptState
    rng: jax.Array  # base key; step s uses fold_in(rng, s), so no key is ever carried forward
    method_state: Any = struct.field(default_factory=dict)  # the method's own state (Method.init_state)


def init_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int, *, method: Method | None = None,
               config=None, num_examples: int = 0) -> tuple[nnx.GraphDef, TrainState]:
    """The state at step 0; with `method` (and the `config` it reads), also its `init_state` and its
    per-sample tables of `table_rows(num_examples)` rows (`num_examples`: the train split's size)."""
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    rng = jax.random.PRNGKey(seed)
    method_state = method.init_state(model, params, config, rng) if method is not None else {}
    tables = method.per_sample_tables(model, config) if method is not None else {}
    if tables:
        if num_examples <= 0:
            raise ValueError(f"method {method.name!r} keeps per-sample state: init_state needs num_examples")
        rows = table_rows(num_examples)
        method_state["per_sample"] = {name: jnp.full((rows, *shape), fill, dtype)
                                      for name, (shape, dtype, fill) in tables.items()}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                       opt_state=tx.init(params), rng=rng, method_state=method_state)
    return graphdef, state


def images_to_float(images: jax.Array, max_value: float) -> jax.Array:
    return images.astype(jnp.float32) / max_value


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, method: Method, ctx: Context,
                    augment: AugmentConfig, *, max_pixel_value: float, grad_cache_chunks: int = 0,
                    state_sharding=None):
    """`step(state, batch) -> (state, metrics)` of `method`, jitted, donating the old state.

    `batch` holds `image` [B, H, W, C] (integers up to `max_pixel_value`) and the fields the method needs
    (`label`, `index`), sharded along `data`. `metrics` are scalars: `loss`, the loss's own metrics,
    `grad_norm`, and what `method.update_state` adds (e.g. `ema_momentum`). After the optimizer update the
    step writes back the BatchNorm statistics and the method's state (`method.update_state`).
    `state_sharding` (`state_shardings(state, mesh, layout)`; default: all replicated) fixes the state's
    layout, in and out: an `fsdp` state stays sharded after every step.

    With `grad_cache_chunks=k > 0` (methods with `grad_cache`) the gradient is computed by GradCache
    (`contrastive.parallel.grad_cache`): each device encodes its views in k sub-batches, so encoder
    activations of only one sub-batch are alive at a time, and the gradient is the same as the plain
    step's (up to float rounding). The model must not mix examples (the runner refuses one that does).
    """
    needs_target = method.needs.target

    def local_grad_cache(params, model_state, views, labels):
        objective = method.objective(ctx)
        encode = lambda p, x, key: nnx.merge(graphdef, p, model_state)(x)
        loss_of = lambda z: objective(z.reshape(labels.shape[0], augment.num_views, -1), labels, axis_name="data")
        value, metrics, grads = grad_cache(encode, loss_of, params, views, num_chunks=grad_cache_chunks,
                                           axis_name="data")
        return (value, (metrics, model_state, {})), grads

    grad_cache_on_mesh = jax.shard_map(local_grad_cache, mesh=ctx.mesh, in_specs=(P(), P(), P("data"), P("data")),
                                       out_specs=((P(), (P(), P(), P())), P()))

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        images = images_to_float(batch["image"], max_pixel_value)
        batch_size = images.shape[0]
        key = jax.random.fold_in(state.rng, state.step)
        # Rows are identified by their global position, so views do not depend on the sharding.
        views = augment_views(key, images, jnp.arange(batch_size), augment)
        # The loss's own sampling (W-MSE, MoCHi, FT): an index no batch row reaches, so it is independent
        # of every view's augmentation stream fold_in(key, row).
        loss_key = jax.random.fold_in(key, jnp.uint32(2**32 - 1))
        fields = {k: v for k, v in batch.items() if k != "image"}

        def loss_fn(params):
            if state_sharding is not None:
                params = gathered(params, state_sharding.params, ctx.mesh)
            # copy=True: BatchNorm writes its batch statistics into variables of this trace level.
            model = nnx.merge(graphdef, params, state.model_state, copy=True)
            target = (nnx.merge(graphdef, state.method_state["target"], state.model_state, copy=True)
                      if needs_target else None)
            value, metrics, out = method.forward(ctx, model, target, state.method_state, views, fields, loss_key)
            _, _, model_state = nnx.split(model, nnx.Param, ...)  # BatchNorm statistics of this batch
            return value, (metrics, model_state, out)

        if grad_cache_chunks:
            value_and_grad = lambda p: grad_cache_on_mesh(p, state.model_state, flatten_views(views), batch["label"])
        else:
            value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
        state, (metrics, model_state, out) = _apply_gradients(state, tx, value_and_grad)
        method_state, more = method.update_state(ctx, state.method_state, out, state.params, state.step)
        state = state.replace(model_state=model_state, method_state=method_state)
        return state, {**metrics, **more}

    return _jit_step(train_step, ctx.mesh, state_sharding)


def choose_captions(key: jax.Array, tokens: jax.Array, num_captions: jax.Array) -> jax.Array:
    """One caption per image, uniformly among its `num_captions` real ones: [B, K, L] -> [B, L].

    Row i draws from `fold_in(key, i)` with i its global position, so the choice does not depend on the
    sharding; a new step (a new key) draws anew, so every caption of an image is seen over training.
    """
    rows = jnp.arange(tokens.shape[0])
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(rows)
    pick = jax.vmap(lambda k, n: jax.random.randint(k, (), 0, n))(keys, num_captions)
    return tokens[rows, pick]


def make_image_text_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, objective,
                         augment: AugmentConfig, mesh: jax.sharding.Mesh, *, max_pixel_value: float,
                         state_sharding=None):
    """`step(state, batch) -> (state, metrics)` of a dual encoder, jitted, donating the old state.

    `batch` holds `image` [B, H, W, C], `tokens` [B, K, L] (K captions per image, PAD rows after the
    last real one) and `num_captions` [B]. Each image is augmented once (`augment.num_views` must be 1)
    and paired with one of its captions drawn anew every step. `metrics` adds the current
    `logit_scale` (t, not its log) and, when the model has one, `logit_bias` to the loss's metrics.
    `state_sharding` as in `make_train_step`.
    """
    loss_on_mesh = jax.shard_map(
        lambda u, v, scale, bias: objective(u, v, scale, bias, axis_name="data"),
        mesh=mesh, in_specs=(P("data"), P("data"), P(), P()), out_specs=(P(), P()))

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        images = images_to_float(batch["image"], max_pixel_value)
        batch_size = images.shape[0]
        key = jax.random.fold_in(state.rng, state.step)
        image_key, caption_key = jax.random.split(key)
        images = augment_views(image_key, images, jnp.arange(batch_size), augment)[:, 0]
        tokens = choose_captions(caption_key, batch["tokens"], batch["num_captions"])

        def loss_fn(params):
            if state_sharding is not None:
                params = gathered(params, state_sharding.params, mesh)
            # copy=True: a BatchNorm image tower (ResNet) writes its batch statistics at this trace level.
            model = nnx.merge(graphdef, params, state.model_state, copy=True)
            scale, bias = model.logit_scale_and_bias()
            loss, metrics = loss_on_mesh(model.embed_image(images), model.embed_text(tokens), scale,
                                         jnp.zeros(()) if bias is None else bias)
            learned = {"logit_scale": scale} if bias is None else {"logit_scale": scale, "logit_bias": bias}
            _, _, model_state = nnx.split(model, nnx.Param, ...)  # BatchNorm statistics of this batch
            return loss, ({**metrics, **learned}, model_state)

        state, (metrics, model_state) = _apply_gradients(state, tx, jax.value_and_grad(loss_fn, has_aux=True))
        return state.replace(model_state=model_state), metrics

    return _jit_step(train_step, mesh, state_sharding)


def _apply_gradients(state: TrainState, tx: optax.GradientTransformation, value_and_grad_fn):
    """One optimizer update from `value_and_grad_fn(params) -> ((loss, aux), grads)` where aux is the
    metrics dict or a tuple starting with it; adds `loss` and `grad_norm` to the metrics."""
    (loss, aux), grads = value_and_grad_fn(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics, rest = (aux[0], aux[1:]) if isinstance(aux, tuple) else (aux, None)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
    state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return (state, metrics) if rest is None else (state, (metrics, *rest))


def state_shardings(state: TrainState, mesh: jax.sharding.Mesh, layout: str = "replicated"):
    """The state's shardings: every array laid out by `layout` (`contrastive.parallel.sharding`:
    `replicated`, or `fsdp`, split along its largest dimension the `data` axis divides), but for the
    per-sample tables, whose rows are split over `data` in either layout."""
    rows = NamedSharding(mesh, P("data"))
    shardings = jax.tree.map(layout_sharding(layout, mesh), state)
    if "per_sample" in state.method_state:
        tables = jax.tree.map(lambda _: rows, state.method_state["per_sample"])
        shardings = shardings.replace(method_state={**shardings.method_state, "per_sample": tables})
    return shardings


def _jit_step(train_step, mesh: jax.sharding.Mesh, shardings=None):
    # Fixed shardings in and out: the state keeps its layout and the next call reuses the compilation.
    replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    shardings = replicated if shardings is None else shardings
    return jax.jit(train_step, in_shardings=(shardings, rows), out_shardings=(shardings, replicated),
                   donate_argnums=0)


def make_encode_fn(graphdef: nnx.GraphDef):
    """`encode(params, model_state, images_float) -> features` (the encoder's output, before the head)."""

    @jax.jit
    def encode(params, model_state, images):
        model = nnx.merge(graphdef, params, model_state)
        model.eval()  # BatchNorm uses its running averages
        return model.encode(images)

    return encode
