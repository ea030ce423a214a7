"""The runner end to end: device-count invariance, resume, and clear failures that lose nothing."""

import json
import math
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from contrastive.main import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_NONFINITE, run
from contrastive.train.config import ConfigError
from contrastive.train.metrics_writer import read_metrics
from contrastive.train.runner import train_and_evaluate


def losses(workdir):
    return [r["loss"] for r in read_metrics(pathlib.Path(workdir) / "metrics.jsonl")]


def snapshot(workdir: pathlib.Path) -> dict:
    """Every file under workdir with its bytes, to prove a failed run changed nothing (but `job.lock`, which
    names the last job that held the workdir: a run refused after taking the free lock rewrites it)."""
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*"))
            if p.is_file() and p.name != "job.lock"}


def test_one_device_equals_eight_devices(tiny_config, tmp_path):
    one = train_and_evaluate(tiny_config(num_devices=1), tmp_path / "one")
    eight = train_and_evaluate(tiny_config(num_devices=8), tmp_path / "eight")
    assert one["step"] == eight["step"] == 20
    a, b = losses(tmp_path / "one"), losses(tmp_path / "eight")
    assert len(a) == len(b) == 20
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    assert a[-1] < a[0]  # it learns


def test_grad_cache_step_matches_the_plain_step(tiny_config, tmp_path):
    train_and_evaluate(tiny_config(num_steps=6), tmp_path / "plain")
    train_and_evaluate(tiny_config(num_steps=6, grad_cache_chunks=4), tmp_path / "cached")
    np.testing.assert_allclose(losses(tmp_path / "cached"), losses(tmp_path / "plain"), rtol=1e-5)
    with pytest.raises(ConfigError, match=r"grad_cache_chunks=3 must divide each device's 16 encoded rows"):
        train_and_evaluate(tiny_config(grad_cache_chunks=3), tmp_path / "bad")


def test_reruning_a_finished_run_changes_nothing(tiny_config, tmp_path):
    train_and_evaluate(tiny_config(), tmp_path)
    before = losses(tmp_path)
    result = train_and_evaluate(tiny_config(), tmp_path)
    assert result["step"] == 20 and losses(tmp_path) == before


def start_cli(config, workdir) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "contrastive.main", "--config", str(write_config(config, workdir)),
                             "--workdir", str(workdir)], stderr=subprocess.PIPE, text=True)


def wait_for_step(proc, workdir, step, timeout=300):
    """Block until metrics.jsonl shows `step` and a checkpoint exists; fail if the run ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = len(read_metrics(workdir / "metrics.jsonl")) if (workdir / "metrics.jsonl").exists() else 0
        has_ckpt = any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*")) if done else False
        if done >= step and has_ckpt:
            return
        assert proc.poll() is None, f"run ended before step {step}: {proc.stderr.read()}"
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_the_uninterrupted_result(tiny_config, tmp_path, sig):
    config = tiny_config(num_steps=150, **{"checkpoint.every_steps": 20, "eval.at_end": True})
    proc = start_cli(config, tmp_path / "killed")
    wait_for_step(proc, tmp_path / "killed", 50)
    proc.send_signal(sig)
    err = proc.communicate()[1]
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == EXIT_INTERRUPTED and "Run the same command to resume" in err
    assert not (tmp_path / "killed" / "eval.json").exists()
    killed_at = len(read_metrics(tmp_path / "killed" / "metrics.jsonl"))
    assert 50 <= killed_at < 150

    resumed = start_cli(config, tmp_path / "killed")
    err = resumed.communicate()[1]
    assert resumed.returncode == 0, err
    assert "resumed from the checkpoint at step" in err
    full = start_cli(config, tmp_path / "full")
    assert full.wait() == 0
    assert [r["step"] for r in read_metrics(tmp_path / "killed" / "metrics.jsonl")] == list(range(150))
    assert losses(tmp_path / "killed") == losses(tmp_path / "full")
    eval_killed, eval_full = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("killed", "full"))
    assert eval_killed == eval_full
    learned = eval_full["learned"]
    assert {"ridge_probe", "mean_classifier", "uniformity", "tolerance", "alignment"} <= set(learned)
    assert all(0 <= eval_full[r][m] <= 1 for r in ("learned", "random_init", "raw_pixels")
               for m in ("linear_probe", "knn", "ridge_probe", "mean_classifier"))
    assert (tmp_path / "full" / learned["similarity_histograms"]).stat().st_size > 1000  # the PNG


def test_unknown_config_key_lists_valid_keys(tmp_path, capsys):
    code = run(["--config", "configs/simclr_digits.py", "--workdir", str(tmp_path / "w"),
                "--config.optimizer.learning_rate=0.1"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert "unknown config key 'config.optimizer.learning_rate'" in err and "lr" in err and "warmup_steps" in err
    assert "Traceback" not in err and not (tmp_path / "w").exists()


def test_unknown_loss_key_lists_valid_keys(tiny_config, tmp_path):
    config = tiny_config()
    with config.loss.unlocked():
        config.loss.temprature = 0.1
    with pytest.raises(ConfigError, match=r"config.loss.temprature.*valid keys: name, .*temperature"):
        train_and_evaluate(config, tmp_path)


def test_batch_not_divisible_by_devices(tiny_config, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"batch_size=60 .* not divisible by the 8 devices"):
        train_and_evaluate(tiny_config(batch_size=60), tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_incompatible_checkpoint_config_is_refused_and_workdir_untouched(tiny_config, tmp_path):
    train_and_evaluate(tiny_config(num_steps=5), tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match=r"incompatible config:\n  config.model.widths: checkpoint has \[8, 16\], "
                                          r"this run has \[8, 32\]"):
        train_and_evaluate(tiny_config(**{"model.widths": (8, 32)}), tmp_path)
    assert snapshot(tmp_path) == before


def test_unreadable_checkpoint_falls_back_to_previous(tiny_config, tmp_path, capsys):
    train_and_evaluate(tiny_config(num_steps=10), tmp_path)
    reference = losses(tmp_path)
    # Damage every array file of the newest checkpoint (step 10).
    damaged = [p for p in (tmp_path / "checkpoints" / "10" / "state").rglob("*") if p.is_file() and p.stat().st_size]
    assert damaged
    for p in damaged:
        p.write_bytes(b"\0garbage" * 4)
    capsys.readouterr()
    result = train_and_evaluate(tiny_config(num_steps=10), tmp_path)
    err = capsys.readouterr().err
    assert "checkpoint at step 10 is unreadable" in err and "falling back" in err
    assert (tmp_path / "unreadable_checkpoints" / "10").is_dir()  # kept for inspection, not deleted
    assert "resumed from the checkpoint at step 5" in err
    assert result["step"] == 10 and losses(tmp_path) == reference


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path, capsys):
    # A huge learning rate with SGD overflows the weights within a few steps.
    config = tiny_config(num_steps=40, **{"optimizer.name": "sgd", "optimizer.lr": 1e25, "optimizer.warmup_steps": 0,
                                          "checkpoint.every_steps": 1, "log_every": 5})
    code = run_with_config(config, tmp_path)
    err = capsys.readouterr().err
    assert code == EXIT_NONFINITE and "non-finite loss at step" in err
    records = read_metrics(tmp_path / "metrics.jsonl")
    bad_step = min(r["step"] for r in records if r["loss"] is None or not math.isfinite(r["loss"]))
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    # Checkpoint k holds the state after k steps, i.e. before step k ran: only states before the bad step.
    assert saved and max(saved) <= bad_step
    assert f"last good checkpoint is step {max(saved)}" in err


def write_config(config, workdir) -> pathlib.Path:
    """The config object as a config file, for the command line."""
    path = workdir.parent / f"{workdir.name}_config.py"
    path.write_text("import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict("
                    + repr(config.to_dict()) + ")\n")
    return path


def run_with_config(config, workdir):
    return run(["--config", str(write_config(config, workdir)), "--workdir", str(workdir)])
