"""The memory benchmark's worker and report (experiments/loss_memory.py), on sizes that take seconds: the
full sweep runs for an hour, so what it relies on (XLA's buffer sizes, the over-budget refusal, the target
checks) is tested here."""

import pytest

from experiments import loss_memory as lm

GIB = 2**30


def loss_row(impl, batch, budget_gib, devices=1, dim=32):
    cfg = {"kind": "loss", "impl": impl, "devices": devices, "dim": dim, "batch": batch, "chunk": 128,
           "budget_gib": budget_gib}
    return lm.run_config(cfg, timeout=300)


@pytest.mark.slow
def test_over_budget_configs_are_compiled_but_not_run():
    b = 2048
    small = loss_row("gather", b, budget_gib=1e-3)
    assert small["error"].startswith("not run: compiled program needs")
    assert "seconds" not in small and "peak" not in small
    assert small["xla_bytes"] >= b * b * 4  # the dense logits alone
    ran = loss_row("gather", b, budget_gib=16)
    assert "error" not in ran and ran["seconds"] > 0 and ran["peak"] > ran["baseline"] > 0
    assert ran["xla_bytes"] == small["xla_bytes"]  # same program


@pytest.mark.slow
def test_probe_finds_where_gather_leaves_the_budget():
    budget = 0.05  # GiB: gather's buffers grow ~4x per doubling of B and cross it between 1,024 and 4,096
    row = lm.run_config({"kind": "probe", "impl": "gather", "devices": 1, "dim": 32, "start": 256, "chunk": 128,
                         "budget_gib": budget}, timeout=300)
    assert row["largest"] * 2 == row["first_over"] and row["first_over_bytes"] > budget * GIB
    tiled = lm.run_config({"kind": "probe", "impl": "tiled", "devices": 1, "dim": 32, "start": row["first_over"],
                           "chunk": 128, "budget_gib": budget}, timeout=300)
    assert tiled["largest"] >= 4 * row["first_over"]  # linear, not quadratic, in B


def _rows(gather_s, tiled_s, fraction, gc_peaks, gc_times):
    losses = [
        {"impl": "gather", "devices": 1, "dim": 128, "batch": 16384, "seconds": gather_s, "peak": 8 * GIB},
        {"impl": "gather", "devices": 1, "dim": 128, "batch": 32768, "xla_bytes": 32 * GIB, "error": "not run: ..."},
        {"impl": "tiled", "devices": 1, "dim": 128, "batch": 16384, "seconds": tiled_s, "peak": GIB,
         "fraction": fraction, "fraction_d": 2 * fraction},
        {"impl": "tiled", "devices": 1, "dim": 128, "batch": 131072, "seconds": 600.0, "peak": GIB // 2,
         "fraction": fraction, "fraction_d": 2 * fraction},
    ]
    gradcache = [{"impl": impl, "batch": b, "peak": peak, "seconds": s}
                 for impl, b, peak, s in [("plain", 256, GIB, 1.0), ("plain", 4096, 2 * GIB, 10.0),
                                          ("gradcache", 256, gc_peaks[0], gc_times[0]),
                                          ("gradcache", 4096, gc_peaks[1], gc_times[1])]]
    return losses, gradcache


def test_targets_report_met_and_missed_with_the_numbers():
    good = "\n".join(lm.check_targets(*_rows(10.0, 5.0, 0.9, (GIB, 1.1 * GIB), (1.0, 12.0)), budget_gib=16))
    assert "MISSED" not in good and good.count(": met") == 5
    assert "at B=32,768 its compiled program needs 32.00 GiB > 16 GiB" in good
    bad = "\n".join(lm.check_targets(*_rows(1.0, 1.5, 0.3, (GIB, 2 * GIB), (1.0, 20.0)), budget_gib=16))
    assert "1.50x (target <= 1.3x): MISSED" in bad
    assert "lowest 30%" in bad and "(target >= 40%): MISSED" in bad
    assert "= 2.00x (target <= 1.25x): MISSED" in bad
    assert "at most 2.00x (B=4,096)" in bad and "(target <= 1.5x): MISSED" in bad
