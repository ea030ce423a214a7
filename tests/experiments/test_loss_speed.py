"""The speed benchmark (experiments/loss_speed.py): its naive baselines compute our losses, and a case run in
its own process reports every implementation with agreeing values."""

import jax
import numpy as np
import pytest

from experiments import loss_speed as ls
from tests.losses.helpers import random_embeddings, unit_rows


@pytest.mark.parametrize("loss", ["clip", "siglip"])
@pytest.mark.parametrize("devices", [1, 8])
def test_naive_baselines_equal_our_losses_in_value_and_gradient(loss, devices):
    x, y = unit_rows(random_embeddings(0, 32, 8)), unit_rows(random_embeddings(1, 32, 8))
    naive = jax.jit(jax.value_and_grad(ls.naive_loss(loss, devices), argnums=(0, 1)))(x, y)
    ours = jax.jit(jax.value_and_grad(ls.ours_loss(loss, devices, impl="gather"), argnums=(0, 1)))(x, y)
    for a, b in zip(jax.tree.leaves(naive), jax.tree.leaves(ours), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_case_in_its_own_process_reports_every_implementation():
    row = ls.run_case({"loss": "clip", "devices": 1, "dim": 32, "batch": 256, "repeats": 2, "budget_gib": 16},
                      timeout=300)
    assert "error" not in row, row.get("error")
    impls = row["impls"]
    assert {"naive", "dense", "tiled", "matmul"} <= set(impls) and row["auto"] == "dense"
    assert row["peak_flops"] > 0
    for name in ("naive", "dense", "tiled"):
        r = impls[name]
        assert len(r["times"]) == 2 and r["min_s"] <= r["seconds"] <= r["max_s"]
        assert r["peak"] > 0 and r["xla_bytes"] > 0 and r["of_peak"] > 0
        assert r["max_rel_diff"] < 1e-5  # the same loss and gradients as naive
    assert abs(impls["dense"]["value"] - impls["naive"]["value"]) < 1e-5 * impls["naive"]["value"]
    table = ls.report([row], "python experiments/loss_speed.py --quick", 1.0, (0.5, 1.5))
    assert "| clip | 1 | 32 | 256 |" in table and "| dense |" in table and "0.5 at the start and 1.5" in table
    readme = ls.readme_table([{"command": "python experiments/loss_speed.py --quick", "rows": [row]}], ["q"])
    assert "| clip | 1 | 32 | 256 | " in readme and "--readme q" in readme


@pytest.mark.slow
def test_implementations_over_the_budget_are_reported_not_run():
    """Only the tiled program fits a tiny budget: naive and dense are refused, and nothing is compared."""
    row = ls.run_case({"loss": "siglip", "devices": 1, "dim": 16, "batch": 2048, "repeats": 1, "budget_gib": 0.005},
                      timeout=300)
    assert "error" not in row, row.get("error")
    impls = row["impls"]
    assert impls["naive"]["error"].startswith("not run") and impls["dense"]["error"].startswith("not run")
    assert impls["tiled"]["seconds"] > 0 and "max_rel_diff" not in impls["tiled"]
    if "open_clip" in impls:  # with the peer extra: 5 x 2048^2 float32 is 80 MiB > 5 MiB
        assert impls["open_clip"]["error"].startswith("not run")
    assert "not run" in ls.readme_table([{"command": "c", "rows": [row]}], ["q"])


def _square_buffers(fn, b=256, d=16):
    """Instructions of the compiled fwd+bwd program that write a b x b float32 array (passes over the logits)."""
    x = jax.ShapeDtypeStruct((b, d), np.float32)
    hlo = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(x, x).compile().as_text()
    return sum(f" = f32[{b},{b}]" in line for line in hlo.splitlines() if "parameter(" not in line)


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_our_dense_path_writes_no_more_logit_sized_arrays_than_naive_jax(loss):
    """The regression the speed issue was about: the dense CLIP path wrote twice naive's b x b arrays."""
    ours, naive = _square_buffers(ls.ours_loss(loss, 1, impl="gather")), _square_buffers(ls.naive_loss(loss, 1))
    assert 0 < ours <= naive, (ours, naive)
