"""Workarounds for jaxlib 0.10's CPU backend.

* It miscompiles reductions of dots with constant operands unless `contrastive` disables that fusion
  (see contrastive/__init__.py).
* Its batched triangular solve deadlocks on a host with one CPU device under `jax.grad` at D >= 128, so
  W-MSE solves one block at a time (contrastive/losses/wmse.py, `_each_block`). The suite's 8 virtual
  devices change the scheduling and hide the hang, so these tests run fresh processes with one device,
  under a timeout that a hang would hit.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import contrastive  # noqa: F401 - sets XLA_FLAGS
from contrastive.train.metrics_writer import read_metrics


def test_dot_with_constant_operand_then_sum_is_right():
    x = np.random.default_rng(0).normal(size=(898, 8)).astype(np.float32)
    got = jax.jit(lambda x: (x @ jnp.ones((8, 10))).sum())(x)
    np.testing.assert_allclose(got, (x.astype(np.float64) @ np.ones((8, 10))).sum(), rtol=1e-4)


def one_device_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


WMSE_GRADIENT_CALLS = """
import contrastive, jax
from contrastive.losses import wmse
grad = jax.jit(jax.value_and_grad(lambda z, k: wmse(z, key=k, w_size=256, w_iter=2)[0]))
z = jax.random.normal(jax.random.PRNGKey(0), (512, 2, 128))
assert jax.device_count() == 1
for i in range(300):
    value, g = grad(z, jax.random.PRNGKey(i))
    g.block_until_ready()
print("done", float(value))
"""


@pytest.mark.slow
def test_wmse_gradient_at_d128_does_not_hang_on_one_cpu_device():
    """Before the fix this hung after 0 to 300 calls (2 of 2 tries); it takes ~10 s now."""
    proc = subprocess.run([sys.executable, "-c", WMSE_GRADIENT_CALLS], capture_output=True, text=True,
                          env=one_device_env(), timeout=240)
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr


@pytest.mark.slow
def test_wmse_run_at_d128_trains_through_the_command_line(tmp_path):
    """The reported command (shorter): 128-d projections, groups of 256; before the fix it never logged a step."""
    workdir = tmp_path / "wmse128"
    proc = subprocess.run(
        [sys.executable, "-m", "contrastive.main", "--config", "configs/wmse_digits.py", "--workdir", str(workdir),
         "--config.model.projection_dim=128", "--config.loss.w_size=256", "--config.num_steps=50",
         "--config.eval.at_end=False", "--config.progress=False", f"--config.data.data_dir={tmp_path / 'tfds'}"],
        capture_output=True, text=True, env=one_device_env(), timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_metrics(workdir / "metrics.jsonl")[-1]["step"] == 49
