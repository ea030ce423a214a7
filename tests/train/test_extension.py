"""A method defined and registered in this file alone trains and evaluates through the runner.

This is the extension point the README's "Adding a method" section describes: a loss, a `Method` with its
`forward`, one `register` call, and a config naming it; no edit anywhere else.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from contrastive import methods
from contrastive.losses.core import gather_rows, global_sum, l2_normalize, num_devices, row_offset
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
    c = tiny_config(num_steps=10, **overrides)
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
