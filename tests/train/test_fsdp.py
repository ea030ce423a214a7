"""`config.sharding='fsdp'`: the rule (shape -> PartitionSpec), the same losses as `replicated` with the
parameters and optimizer state really split over the 8 devices (and still split after steps), the compiled
step all-gathering the split parameters, and checkpoints restoring from one layout into the other."""

import re

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from contrastive.data import pipeline
from contrastive.parallel.sharding import FSDP_MIN_SIZE, bytes_per_device, fsdp_spec, layout_sharding
from contrastive.train import runner
from contrastive.train.config import ConfigError
from contrastive.train.metrics_writer import read_metrics
from contrastive.train.step import state_shardings

STEPS = 3


@pytest.mark.parametrize(("shape", "axis_size", "spec"), [
    ((3, 3, 32, 64), 8, P(None, None, None, "data")),  # a conv kernel: its output channels
    ((1024, 256), 8, P("data")),  # the largest dimension
    ((256, 256), 8, P(None, "data")),  # a tie: the later dimension
    ((1002, 24), 8, P(None, "data")),  # the largest that the axis divides
    ((1000, 24), 8, P("data")),
    ((1001, 25), 8, P()),  # no dimension divides: replicated
    ((128, 64), 8, P()),  # 8,192 elements < 2**14: replicated
    ((2**14,), 8, P("data")),  # exactly the threshold is split
    ((2**14 - 1,), 1, P()),
    ((), 8, P()),  # a scalar
    ((6, 4096), 3, P("data")),  # the rule follows the axis size: 3 divides 6, not 4096
    ((6, 4096), 8, P(None, "data")),
])
def test_the_fsdp_rule_splits_the_largest_divisible_dimension_of_large_arrays(shape, axis_size, spec):
    assert fsdp_spec(shape, axis_size) == spec


def test_the_threshold_is_a_parameter_and_an_unknown_layout_is_refused(tiny_config):
    assert fsdp_spec((64, 8), 8, min_size=512) == P("data")
    assert fsdp_spec((64, 8), 8, min_size=513) == P()
    assert FSDP_MIN_SIZE == 2**14
    with pytest.raises(ValueError, match="sharding='zero3' is not one of 'replicated', 'fsdp'"):
        layout_sharding("zero3", jax.sharding.Mesh(np.array(jax.devices()), ("data",)))
    with pytest.raises(ConfigError, match="config.sharding='zero3' is not one of 'replicated', 'fsdp'"):
        runner.check_config(tiny_config(sharding="zero3"))


def digits_config(tiny_config, **more):
    """The default SimCLR digits model (its larger kernels pass the 2**14 threshold), a few steps."""
    return tiny_config(**{"num_steps": STEPS, "model.widths": (32, 64), "model.head_hidden": (128,),
                          "model.projection_dim": 64, **more})


def train_steps(config, workdir):
    """(state after `config.num_steps` steps, per-step losses, compiled step's HLO text), built as the
    runner builds a run."""
    setup = runner.check_config(config)
    built = runner._build_views(config, setup, workdir)
    state = jax.device_put(built.state, state_shardings(built.state, setup.mesh, config.sharding))
    batches = pipeline.GlobalBatches(built.train_source, global_batch_size=config.batch_size, seed=config.seed,
                                     mesh=setup.mesh, keys=built.keys, num_workers=1)
    data = batches.iterate(0)
    first = next(data)
    step = built.train_step.lower(state, first).compile()
    losses, batch = [], first
    for _ in range(config.num_steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        batch = next(data)
    return state, np.array(losses), step.as_text()


def split_leaves(tree):
    return {jax.tree_util.keystr(path): leaf.sharding.spec for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
            if not leaf.sharding.is_fully_replicated}


@pytest.mark.slow
def test_fsdp_trains_to_the_losses_of_replicated_with_its_state_split(tiny_config, tmp_path):
    replicated, want, _ = train_steps(digits_config(tiny_config), tmp_path / "replicated")
    state, got, hlo = train_steps(digits_config(tiny_config, sharding="fsdp"), tmp_path / "fsdp")
    print("replicated losses:", want.tolist(), "\nfsdp losses:      ", got.tolist(),
          f"\nlargest relative difference {np.max(np.abs(got / want - 1)):.2e}")
    np.testing.assert_allclose(got, want, rtol=1e-5)

    # After the steps: the three kernels of >= 2**14 elements are split, and Adam's two moments alike.
    params = split_leaves(state.params)
    assert params == {"['encoder']['convs'][1]['kernel'].value": P(None, None, None, "data"),
                      "['encoder']['dense']['layers'][0]['kernel'].value": P("data"),
                      "['head']['layers'][0]['kernel'].value": P("data")}, params
    opt = split_leaves(state.opt_state)
    assert len(opt) == 2 * len(params) and set(opt.values()) == set(params.values()), opt
    assert split_leaves(replicated.params) == {} and split_leaves(replicated.opt_state) == {}
    kernel = jax.tree.leaves(state.params["encoder"]["dense"]["layers"][0]["kernel"])[0]
    assert {s.data.shape for s in kernel.addressable_shards} == {(1024 // 8, 256)}
    small, big = bytes_per_device(state.params), bytes_per_device(replicated.params)
    print(f"parameters per device: fsdp {small:,} B, replicated {big:,} B")
    assert small < big / 3
    # The same trained values, whatever their layout.
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(replicated.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)

    # The compiled step gathers each split parameter whole (f32[1024,256] etc.) from its shards.
    gathered = set(re.findall(r"= (f32\[[\d,]+\])\{[^}]*\} all-gather\(", hlo))
    assert {"f32[1024,256]", "f32[256,128]", "f32[3,3,32,64]"} <= gathered, gathered


@pytest.mark.slow
def test_checkpoints_restore_from_replicated_into_fsdp_and_back(tiny_config, tmp_path):
    """Replicated steps 0-1, then fsdp resumes its checkpoint for steps 2-3, then replicated resumes the
    fsdp-written checkpoint for steps 4-5 (constant learning rate, so that num_steps may grow): the losses
    of an uninterrupted replicated run. The fsdp leg ends with the final evaluation on split parameters."""
    settings = {"optimizer.schedule": "constant", "optimizer.warmup_steps": 1, "checkpoint.every_steps": 2,
                "evals.probes.representations": ("learned",)}
    config = lambda steps, **more: digits_config(tiny_config, **settings, num_steps=steps, **more)
    workdir = tmp_path / "run"
    runner.train_and_evaluate(config(2), workdir)
    results = runner.train_and_evaluate(config(4, sharding="fsdp", **{"eval.at_end": True}), workdir)
    assert results["step"] == 4 and results["learned"]["linear_probe"] > 0.5, results
    runner.train_and_evaluate(config(6), workdir)
    runner.train_and_evaluate(config(6), tmp_path / "uninterrupted")
    got, want = (read_metrics(d / "metrics.jsonl") for d in (workdir, tmp_path / "uninterrupted"))
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(6))
    print("resumed across layouts:", [r["loss"] for r in got], "\nuninterrupted:         ", [r["loss"] for r in want])
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in want], rtol=1e-5)
