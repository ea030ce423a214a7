"""BYOL, SimSiam, W-MSE, MoCo and DirectPred through the train step and the runner: the extra state
(EMA target, key queue, correlation) and what the methods' papers say must hold."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from contrastive.data import pipeline
from contrastive.data.augment import AugmentConfig, augment_views
from contrastive.methods import Context
from contrastive.models import directpred
from contrastive.models.encoders import build_model
from contrastive.parallel.mesh import make_mesh
from contrastive.train.config import ConfigError
from contrastive.train.metrics_writer import read_metrics
from contrastive.train.objectives import view_method
from contrastive.train.optim import build_optimizer
from contrastive.train.runner import load_split, train_and_evaluate
from contrastive.train.step import images_to_float, init_state, make_train_step

METHOD_CONFIGS = {
    "byol": ("configs/byol_digits.py", {"model.predictor_hidden": (16,)}),
    "simsiam": ("configs/simsiam_digits.py", {"model.predictor_hidden": (4,)}),
    "wmse": ("configs/wmse_digits.py", {"loss.w_size": 32, "loss.whitening": "global"}),
    "moco": ("configs/moco_digits.py", {"method.queue_size": 128}),
    # MoCHi and feature transformation together (each alone is a config of configs/moco_digits.py).
    "moco_mochi_ft": ("configs/moco_digits.py:mochi", {"method.queue_size": 128, "loss.mochi_hardest": 16,
                                                       "loss.mochi_mix": 8, "loss.mochi_query_mix": 4,
                                                       "loss.ft_extrapolation_alpha": 2.0,
                                                       "loss.ft_interpolation_alpha": 2.0}),
    "directpred": ("configs/directpred_digits.py", {}),
    "byol_bn_per_view": ("configs/byol_digits.py", {"model.predictor_hidden": (16,),
                                                    "model.batch_norm_per_view": True}),
}


def method_config(tiny_config, name, **overrides):
    path, own = METHOD_CONFIGS.get(name, ("configs/simclr_digits.py", {}))
    return tiny_config(path, **{**own, **overrides})


def losses_of(workdir):
    return [r["loss"] for r in read_metrics(workdir / "metrics.jsonl")]


def built(config, num_devices=1):
    """(graphdef, state, step, batch, method, ctx, mesh) for one step of `config` by hand."""
    mesh = make_mesh(num_devices)
    source = load_split(config, "train")
    model = build_model(config.model, tuple(source[0]["image"].shape), seed=config.seed)
    augment = AugmentConfig(**config.augment)
    method = view_method(config.loss.name)
    method.check(config, num_devices)
    ctx = Context(config=config, mesh=mesh, loss=method.bound_loss(config))
    tx = build_optimizer(config.optimizer, config.num_steps)
    graphdef, state = init_state(model, tx, config.seed, method=method, config=config)
    step = make_train_step(graphdef, tx, method, ctx, augment, max_pixel_value=16.0)
    batches = pipeline.GlobalBatches(source, global_batch_size=config.batch_size, seed=0, mesh=mesh,
                                     keys=("image", "label"))
    state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    return graphdef, state, step, next(batches.iterate(0)), method, ctx, mesh


def views_of(config, state, batch):
    images = images_to_float(batch["image"], 16.0)
    key = jax.random.fold_in(state.rng, state.step)
    return augment_views(key, images, jnp.arange(images.shape[0]), AugmentConfig(**config.augment))


@pytest.mark.parametrize("name", ["byol", "moco"])
def test_target_branch_gets_exactly_zero_gradient(tiny_config, name):
    config = method_config(tiny_config, name)
    graphdef, state, _, batch, method, ctx, mesh = built(config)
    views = views_of(config, state, batch)

    def value(params, target_params):
        model = nnx.merge(graphdef, params, state.model_state, copy=True)
        target = nnx.merge(graphdef, target_params, state.model_state, copy=True)
        fields = {"label": batch["label"]}
        return method.forward(ctx, model, target, state.method_state, views, fields, jax.random.PRNGKey(0))[0]

    online_grad, target_grad = jax.grad(value, argnums=(0, 1))(state.params, state.method_state["target"])
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(target_grad))
    assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(online_grad))


@pytest.mark.parametrize("per_view", [False, True])
def test_batch_norm_statistics_pool_the_views_or_are_taken_per_view(tiny_config, per_view):
    """BYOL's loss by hand: the online network, the predictor and the target each run once on all views
    (BatchNorm statistics over both views) or, with model.batch_norm_per_view, once per view."""
    config = method_config(tiny_config, "byol", **{"model.batch_norm_per_view": per_view})
    graphdef, state, _, batch, method, ctx, _ = built(config)
    views = views_of(config, state, batch)
    merge = lambda params: nnx.merge(graphdef, params, state.model_state, copy=True)
    model, target = merge(state.params), merge(state.method_state["target"])
    got = method.forward(ctx, model, target, state.method_state, views, {}, jax.random.PRNGKey(0))[0]

    def run(fn, x):  # [B, V, ...] -> [B, V, D]
        if per_view:
            return jnp.stack([fn(x[:, 0]), fn(x[:, 1])], axis=1)
        return fn(x.reshape(-1, *x.shape[2:])).reshape(x.shape[0], 2, -1)

    p, t = run(model.predict, run(model, views)), run(target, views)
    unit = lambda a: a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    cos = (unit(p[:, 0]) * unit(t[:, 1])).sum(-1) + (unit(p[:, 1]) * unit(t[:, 0])).sum(-1)
    np.testing.assert_allclose(got, 4.0 - 2.0 * cos.mean(), rtol=1e-5)
    flipped = config.copy_and_resolve_references()
    flipped.model.batch_norm_per_view = not per_view  # the other choice gives another loss: the flag acts
    other = Context(config=flipped, mesh=ctx.mesh, loss=ctx.loss)
    assert abs(float(method.forward(other, model, target, state.method_state, views, {},
                                    jax.random.PRNGKey(0))[0]) - float(got)) > 1e-4


def test_ema_target_follows_the_online_network(tiny_config):
    config = method_config(tiny_config, "byol", **{"method.ema.momentum": 0.9, "method.ema.momentum_end": 0.9})
    _, state, step, batch, *_ = built(config)
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = step(state, batch)
    assert float(metrics["ema_momentum"]) == pytest.approx(0.9)
    for t, old, new in zip(*(jax.tree.leaves(x) for x in (state.method_state["target"], before, state.params))):
        np.testing.assert_allclose(t, 0.9 * old + 0.1 * np.asarray(new), rtol=1e-5, atol=1e-7)


def test_queue_holds_the_keys_of_every_device_in_global_order(tiny_config):
    config = method_config(tiny_config, "moco")
    results = {}
    for devices in (1, 8):
        graphdef, state, step, batch, method, ctx, mesh = built(config, devices)
        initial = np.asarray(state.method_state["queue"]["keys"])
        target = nnx.merge(graphdef, state.method_state["target"], state.model_state)
        keys = target(views_of(config, state, batch)[:, 1])
        state, metrics = step(state, batch)
        results[devices] = (np.asarray(state.method_state["queue"]["keys"]), float(metrics["loss"]))
    queue, batch_size = results[8][0], config.batch_size
    expected = np.asarray(keys / jnp.linalg.norm(keys, axis=1, keepdims=True))
    np.testing.assert_allclose(queue[:batch_size], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(queue[batch_size:], initial[batch_size:])
    np.testing.assert_allclose(results[8][0], results[1][0], rtol=1e-4, atol=1e-5)
    assert results[8][1] == pytest.approx(results[1][1], rel=1e-5)


def test_directpred_correlation_and_predictor_after_a_step(tiny_config):
    config = method_config(tiny_config, "directpred")
    graphdef, state, step, batch, *_ = built(config)
    z = nnx.merge(graphdef, state.params, state.model_state)(
        views_of(config, state, batch).reshape(-1, 8, 8, 1))
    state, _ = step(state, batch)
    z = np.asarray(z, np.float64)
    expected = z.T @ z / len(z)  # the first update stores E[z z^T] (the authors' empty EMA)
    np.testing.assert_allclose(state.method_state["correlation"], expected, rtol=1e-4, atol=1e-6)
    lam, u = np.linalg.eigh(expected)
    lam = np.clip(lam, 0, None)
    w = u @ np.diag(np.sqrt(lam / lam.max()) + config.method.directpred.eps) @ u.T
    np.testing.assert_allclose(directpred.predictor_weights(state.method_state["correlation"],
                                                            eps=config.method.directpred.eps), w, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(METHOD_CONFIGS))
def test_one_device_equals_eight_devices(tiny_config, tmp_path, name):
    """Global-batch semantics for every method, BatchNorm (synchronised) and the EMA and queue included.

    With SGD: Adam divides each gradient by its own magnitude, so parameters whose gradient is round-off
    (SimSiam at initialisation has many) take lr-sized steps whose signs depend on the reduction order,
    and 1 and 8 devices drift apart by ~1e-4 within a few steps although their gradients agree to ~1e-7.
    """
    for devices in (1, 8):
        config = method_config(tiny_config, name, num_steps=8, num_devices=devices,
                               **{"optimizer.name": "sgd", "optimizer.lr": 0.05})
        train_and_evaluate(config, tmp_path / str(devices))
    a, b = losses_of(tmp_path / "1"), losses_of(tmp_path / "8")
    assert len(a) == len(b) == 8 and all(np.isfinite(a))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert a[-1] != a[0]  # it trains


@pytest.mark.parametrize("name,overrides,message", [
    ("byol", {"model.predictor_hidden": ()}, "needs exactly one predictor"),
    ("byol", {"method.directpred.enabled": True}, "needs exactly one predictor"),
    ("moco", {"model.predictor_hidden": (8,)}, "has no predictor"),
    ("moco", {"method.queue_size": 100}, "queue_size=100 must be a positive multiple of the global batch size 64"),
    ("byol", {"method.queue_size": 64}, r"config.method.queue_size is not a setting of method 'byol'; its "
                                         r"settings: directpred, ema"),
    ("nt_xent", {"method.ema": {"momentum": 0.9}}, r"config.method.ema is not a setting of method 'nt_xent'; "
                                                    r"its settings: none"),
    ("byol", {"method.ema.momentm": 0.9}, r"config.method.ema.momentm is not a setting of method 'byol'"),
    ("byol", {"method.ema.momentum": 1.5}, "config.method.ema: EMA momentum must satisfy"),
    ("byol", {"grad_cache_chunks": 2}, "GradCache is wired for the contrastive view-based losses only"),
    ("moco", {"augment.num_views": 3}, "needs augment.num_views=2"),
    ("moco", {"loss.key": 3}, "unknown config key"),
    ("moco", {"loss.reduction": "none"}, r"unknown config key\(s\) config.loss.reduction"),
    ("wmse", {"loss.whitening": "local"}, r"local whitening: w_size \(32\) must divide the local batch \(8 rows\)"),
    ("wmse", {"loss.w_size": 48}, r"global whitening: w_size \(48\) must divide the global batch \(64 rows"),
    ("wmse", {"loss.w_size": 8, "loss.eps": 0.0}, r"w_size \(8\) must be larger than the embedding dimension D \(8\)"),
])
def test_bad_method_configs_fail_before_compute(tiny_config, tmp_path, name, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(method_config(tiny_config, name, **overrides), tmp_path)
    assert not tmp_path.joinpath("config.json").exists()


def test_grad_cache_refuses_batch_norm(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="head_norm='batch' does"):
        train_and_evaluate(tiny_config(grad_cache_chunks=2, **{"model.head_norm": "batch"}), tmp_path)


@pytest.mark.slow
def test_simsiam_collapses_without_the_stop_gradient(tiny_config, tmp_path):
    """Chen & He (2021), Fig. 2: without the stop-gradient the loss reaches its minimum -1 and the
    l2-normalised outputs collapse to one point (their std over the batch goes to 0); with it they stay
    spread, near 1/sqrt(d) (isotropic outputs)."""
    dim = 8
    for stop in (True, False):
        train_and_evaluate(method_config(tiny_config, "simsiam", num_steps=150, log_every=10,
                                         **{"loss.stop_gradient": stop, "model.projection_dim": dim,
                                            "optimizer.lr": 1e-2}),
                           tmp_path / str(stop))
    kept, collapsed = (read_metrics(tmp_path / str(stop) / "metrics.jsonl")[-1] for stop in (True, False))
    assert collapsed["output_std"] < 0.1 / np.sqrt(dim) and collapsed["loss"] < -0.99
    assert kept["output_std"] > 0.8 / np.sqrt(dim) and kept["loss"] > -0.9


@pytest.mark.slow
@pytest.mark.parametrize("name", ["byol", "moco"])
def test_killed_run_resumes_exactly_with_target_and_queue(tiny_config, tmp_path, name):
    import signal

    from tests.train.test_runner import start_cli, wait_for_step

    config = method_config(tiny_config, name, num_steps=60, **{"checkpoint.every_steps": 10})
    proc = start_cli(config, tmp_path / "killed")
    wait_for_step(proc, tmp_path / "killed", 25)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert 25 <= len(read_metrics(tmp_path / "killed" / "metrics.jsonl")) < 60
    resumed = start_cli(config, tmp_path / "killed")
    err = resumed.communicate()[1]
    assert resumed.returncode == 0 and "resumed from the checkpoint at step" in err, err
    full = start_cli(config, tmp_path / "full")
    assert full.wait() == 0
    # The losses after the resume depend on the restored EMA target (and queue): equal to the bit.
    assert losses_of(tmp_path / "killed") == losses_of(tmp_path / "full")
