"""experiments/multihost_scaling.py: the commands of each case, the rates it reads, the table it writes."""

import json

import pytest

from experiments import multihost_scaling as ms


def test_one_process_runs_main_with_all_devices_and_more_run_the_launcher(tmp_path):
    cmd, env = ms.command(1, "configs/simclr_digits.py", tmp_path, ["--config.num_steps=5"])
    assert cmd[1:3] == ["-m", "contrastive.main"] and "--xla_force_host_platform_device_count=8" in env["XLA_FLAGS"]
    assert "--config.eval.at_end=False" in cmd and cmd[-1] == "--config.num_steps=5"
    cmd, _ = ms.command(4, "configs/simclr_digits.py", tmp_path, [])
    launcher, job = cmd[:cmd.index("--")], cmd[cmd.index("--") + 1:]
    assert launcher[1:3] == ["-m", "contrastive.launch"]
    assert launcher[launcher.index("--num_processes") + 1] == "4"
    assert launcher[launcher.index("--devices_per_process") + 1] == "2"
    assert job[:2] == ["--config", "configs/simclr_digits.py"]


def test_rates_leave_out_the_first_interval(tmp_path):
    rows = [{"step": 9, "examples_per_s": 10.0}, {"step": 19, "examples_per_s": 300.0},
            {"step": 29, "examples_per_s": 200.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    assert ms.rates(tmp_path) == [300.0, 200.0]


def test_table_is_relative_to_the_fewest_processes():
    rows = [{"processes": p, "examples_per_s": rate, "step_ms": 1e3 * 256 / rate, "wall_s": 10.0 * p}
            for p, rate in [(1, 2000.0), (2, 1000.0), (1, 2200.0), (2, 1100.0)]]
    table = ms.summarise(rows, "configs/simclr_digits.py", 256, 100, ["--processes", "1", "2"])
    row_2 = next(line for line in table.splitlines() if line.startswith("| 2 x 4"))
    assert "| 1050 | 0.50 |" in row_2 and row_2.endswith("| 2 |")
    assert "python experiments/multihost_scaling.py --processes 1 2" in table


def test_process_counts_that_do_not_divide_the_devices_are_refused():
    with pytest.raises(SystemExit):
        ms.main(["--processes", "3", "--out", ""])
