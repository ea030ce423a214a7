"""A method and an evaluator defined and registered in this file alone train and evaluate through the runner.

These are the extension points the README's "Adding a method, a loss, an encoder, a dataset, an evaluator"
section describes: a loss, a `Method` with its `forward`, one `register` call, and a config naming it; an
`Evaluator` with its `run`, one `register_evaluator` call, and a `config.evals` entry; no edit anywhere else.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from contrastive import methods
from contrastive.losses.core import gather_rows, global_sum, l2_normalize, num_devices, row_offset
from contrastive.train import evaluators
from contrastive.train.config import ConfigError
from contrastive.train.metrics_writer import read_metrics
from contrastive.train.runner import train_and_evaluate


def align_uniform(z1, z2, *, t=2.0, weight=1.0, axis_name=None):
    """Wang & Isola (2020): alignment of the positives plus `weight` x uniformity of the global batch."""
    a, b = l2_normalize(z1), l2_normalize(z2)
    n = a.shape[0] * num_devices(axis_name)
    align = global_sum(jnp.sum((a - b) ** 2), axis_name) / n
    every = gather_rows(a, axis_name)  # this device's rows against the global batch
    sq = jnp.sum((a[:, None] - every[None]) ** 2, axis=-1)
    off = jnp.arange(a.shape[0])[:, None] + row_offset(a.shape[0], axis_name) != jnp.arange(n)[None]
    uniform = jnp.log(global_sum(jnp.sum(jnp.where(off, jnp.exp(-t * sq), 0.0)), axis_name) / (n * (n - 1)))
    return align + weight * uniform, {"alignment": align, "uniformity": uniform}


class AlignUniform(methods.Method):
    name = "toy_align_uniform"
    description = "alignment + uniformity (Wang & Isola 2020)"
    needs = methods.Needs(views=2)
    loss_fn = staticmethod(align_uniform)

    def forward(self, ctx, model, target, state, views, batch, key):
        apply = ctx.on_mesh(lambda z: ctx.loss(z[:, 0], z[:, 1], axis_name="data"), jax.sharding.PartitionSpec("data"))
        return (*apply(methods.per_view(model(methods.flatten_views(views)), views.shape[0])), {})


@pytest.fixture
def registered():
    method = methods.register(AlignUniform())
    yield method
    del methods.REGISTRY[method.name]


def toy_config(tiny_config, **overrides):
    c = tiny_config(**{"num_steps": 10, **overrides})
    c.loss = ml_collections.ConfigDict({"name": "toy_align_uniform", "weight": 1.0})
    c.eval.at_end = True
    return c


@pytest.mark.slow
def test_a_method_registered_here_trains_and_evaluates_through_the_runner(registered, tiny_config, tmp_path):
    one = train_and_evaluate(toy_config(tiny_config, num_devices=1), tmp_path / "one")
    train_and_evaluate(toy_config(tiny_config, **{"eval.at_end": False}), tmp_path / "eight")
    losses = {d: [r["loss"] for r in read_metrics(tmp_path / d / "metrics.jsonl")] for d in ("one", "eight")}
    assert len(losses["one"]) == 10 and losses["one"][-1] < losses["one"][0]
    assert {"alignment", "uniformity"} <= set(read_metrics(tmp_path / "one" / "metrics.jsonl")[0])
    np.testing.assert_allclose(losses["eight"], losses["one"], rtol=1e-5, atol=1e-6)  # 8 devices == 1
    assert 0.1 < one["learned"]["linear_probe"] <= 1.0


def test_its_config_is_checked_like_a_built_in_one(registered, tiny_config, tmp_path):
    config = toy_config(tiny_config)
    config.loss.wieght = 2.0
    message = r"config.loss.wieght for loss 'toy_align_uniform'; valid keys: name, t, weight"
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(config, tmp_path)
    assert not tmp_path.joinpath("config.json").exists()


def feature_norms(ctx, options):
    """A toy evaluator: the mean l2 norm of the learned test features, and its `scale` times."""
    norm = float(np.linalg.norm(ctx.features("learned", "test"), axis=1).mean())
    return {"feature_norm": {"mean": norm, "scaled": options["scale"] * norm}}


@pytest.fixture
def toy_evaluator():
    evaluator = evaluators.register_evaluator(evaluators.Evaluator(
        "toy_feature_norm", feature_norms, options={"scale": 2.0},
        format=lambda results: [f"mean feature norm {results['feature_norm']['mean']:.3f}"]))
    yield evaluator
    del evaluators.EVALUATORS[evaluator.name]


@pytest.mark.slow
def test_an_evaluator_registered_here_runs_at_the_end_and_every_n_steps(toy_evaluator, tiny_config, tmp_path,
                                                                      capsys):
    import json

    config = tiny_config(num_steps=6, **{"eval.at_end": True})
    config.evals = ml_collections.ConfigDict({"toy_feature_norm": {**evaluators.default_options("toy_feature_norm"),
                                                                   "every_steps": 2, "scale": 3.0}})
    result = train_and_evaluate(config, tmp_path)
    assert set(result) == {"feature_norm", "step"} and result["step"] == 6
    assert result["feature_norm"]["mean"] > 0
    np.testing.assert_allclose(result["feature_norm"]["scaled"], 3.0 * result["feature_norm"]["mean"])
    assert json.loads((tmp_path / "eval.json").read_text()) == result
    history = [json.loads(line) for line in (tmp_path / "eval_history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 4]  # the end has its own evaluation
    assert history[0]["feature_norm"]["mean"] != history[1]["feature_norm"]["mean"]  # it sees the trained state
    assert f"mean feature norm {result['feature_norm']['mean']:.3f}" in capsys.readouterr().out


@pytest.mark.parametrize("entry, message", [
    ({"no_such_eval": {}}, r"config.evals.no_such_eval: no evaluator of that name; registered: .*probes"),
    ({"toy_feature_norm": {"scael": 1.0}}, r"config.evals.toy_feature_norm.scael is not an option of evaluator "
                                           r"'toy_feature_norm'; valid: at_end, every_steps, scale"),
    ({"retrieval": {}}, r"config.evals.retrieval evaluates image_text runs, not this views run"),
    ({"probes": {"every_steps": -1}}, r"evals.probes.every_steps must be >= 0, got -1"),
])
def test_an_evals_entry_is_checked_before_the_workdir(toy_evaluator, tiny_config, tmp_path, entry, message):
    config = tiny_config(num_steps=4)
    config.evals = ml_collections.ConfigDict(entry)
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(config, tmp_path / "w")
    assert not (tmp_path / "w").exists()


@pytest.fixture
def toy_dataset():
    """Two classes of 8x8 RGB images (bright top half or bright bottom half, plus noise), 8-bit pixels."""
    from contrastive.data import datasets
    from contrastive.data.pipeline import InMemorySource

    def source(split, data_dir):
        rng = np.random.default_rng(0 if split == "train" else 1)
        n = 128 if split == "train" else 64
        label = np.arange(n) % 2
        image = rng.integers(0, 60, (n, 8, 8, 3))
        image[label == 0, :4] += 180
        image[label == 1, 4:] += 180
        return InMemorySource({"image": image.astype(np.uint8), "label": label.astype(np.int64),
                               "index": np.arange(n)})

    spec = datasets.register_dataset(datasets.DatasetSpec("toy_halves", source, classnames=("top", "bottom")))
    yield spec
    del datasets.DATASETS[spec.name]


@pytest.mark.slow
def test_a_dataset_registered_here_trains_and_evaluates_through_the_runner(toy_dataset, tiny_config, tmp_path):
    config = tiny_config(num_steps=4, batch_size=64, **{"data.name": "toy_halves", "eval.at_end": True,
                                                        "evals.view_geometry.at_end": False})
    result = train_and_evaluate(config, tmp_path)
    assert result["num_train"] == 128 and result["num_test"] == 64
    assert result["raw_pixels"]["feature_dim"] == 8 * 8 * 3 and result["raw_pixels"]["linear_probe"] == 1.0
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 4


class VisitLog(AlignUniform):
    """The toy loss, plus per-sample state: how often each example was seen and its last projection."""

    name = "toy_visit_log"
    needs = methods.Needs(views=2, index=True)

    def per_sample_tables(self, model, config):
        return {"visits": ((), jnp.int32, 0), "last": ((model.projection_dim,), jnp.float32, 0.0)}

    def forward(self, ctx, model, target, state, views, batch, key):
        z = methods.per_view(model(methods.flatten_views(views)), views.shape[0])
        apply = ctx.on_mesh(lambda z: ctx.loss(z[:, 0], z[:, 1], axis_name="data"), jax.sharding.PartitionSpec("data"))
        seen = methods.read_rows(state["per_sample"]["visits"], batch["index"])
        return (*apply(z), {"index": batch["index"], "visits": seen + 1, "last": jax.lax.stop_gradient(z[:, 0])})

    def update_state(self, ctx, state, out, params, step):
        tables = {name: methods.write_rows(state["per_sample"][name], out["index"], out[name])
                  for name in ("visits", "last")}
        return {**state, "per_sample": tables}, {"max_visits": jnp.max(tables["visits"])}


@pytest.fixture
def visit_log():
    method = methods.register(VisitLog())
    yield method
    del methods.REGISTRY[method.name]


def newest_tables(workdir):
    import orbax.checkpoint as ocp

    directory = (workdir / "checkpoints").absolute()
    step = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    state = ocp.StandardCheckpointer().restore(directory / str(step) / "state")
    return {k: np.asarray(v) for k, v in state["method_state"]["per_sample"].items()}


@pytest.mark.slow
def test_per_sample_state_is_a_sharded_checkpointed_table_equal_on_one_and_eight_devices(visit_log, tiny_config,
                                                                                        tmp_path):
    """30 steps of 64 rows over the 1,352 digits: epoch 1 and part of epoch 2, so some rows are seen twice."""
    from contrastive.data.pipeline import GlobalBatches, InMemorySource
    from contrastive.parallel.mesh import make_mesh

    def config(devices):
        c = toy_config(tiny_config, num_steps=30, batch_size=64, num_devices=devices,
                       **{"eval.at_end": False, "checkpoint.every_steps": 10})
        c.loss.name = "toy_visit_log"
        return c

    for devices in (1, 8):
        train_and_evaluate(config(devices), tmp_path / str(devices))
    one, eight = newest_tables(tmp_path / "1"), newest_tables(tmp_path / "8")
    assert one["visits"].shape == (1408,) and one["last"].shape == (1408, 8)  # 1,352 padded to 11 x 128
    batches = GlobalBatches(InMemorySource({"x": np.zeros(1352)}), global_batch_size=64, seed=0, mesh=make_mesh(1),
                            keys=("x",))
    expected = np.bincount(np.concatenate([batches.example_indices(s) for s in range(30)]), minlength=1408)
    np.testing.assert_array_equal(one["visits"], expected)
    assert expected.max() == 2 and expected[:1352].min() == 1 and not expected[1352:].any()  # padding: never
    np.testing.assert_array_equal(eight["visits"], one["visits"])
    # The two runs' parameters agree to float round-off for about 15 steps, then drift apart (the dynamics
    # amplify round-off): compare the rows last written at steps <= 12.
    last_step = np.full(1408, 99)
    for s in range(30):
        last_step[batches.example_indices(s)] = s
    early = last_step <= 12
    assert early.sum() >= 4 * 64
    np.testing.assert_allclose(eight["last"][early], one["last"][early], rtol=1e-4, atol=1e-5)
    assert np.all(one["last"][expected == 0] == 0) and np.all(np.abs(one["last"][expected > 0]).sum(1) > 0)
    metrics = read_metrics(tmp_path / "8" / "metrics.jsonl")
    assert metrics[-1]["max_visits"] == 2


def test_per_sample_tables_are_split_over_the_devices_by_rows(visit_log, tiny_config):
    import optax

    from contrastive.models.encoders import build_model
    from contrastive.parallel.mesh import make_mesh
    from contrastive.train.step import init_state, state_shardings

    config = toy_config(tiny_config)
    mesh = make_mesh(8)
    _, state = init_state(build_model(config.model, (8, 8, 1), seed=0), optax.adam(1e-3), 0, method=visit_log,
                          config=config, num_examples=1000)
    state = jax.device_put(state, state_shardings(state, mesh))
    table = state.method_state["per_sample"]["last"]
    assert table.shape == (1024, 8) and table.sharding.spec == jax.sharding.PartitionSpec("data")
    assert {s.data.shape for s in table.addressable_shards} == {(128, 8)}
    assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(state.params))
