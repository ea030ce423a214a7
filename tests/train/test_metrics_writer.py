"""metrics.jsonl and its TensorBoard events: every scalar written, resumes without duplicates, optional."""

import json
import sys

import pytest

from contrastive.train import metrics_writer
from contrastive.train.metrics_writer import MetricsWriter, read_metrics, scalars

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read_events(logdir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard's loader sees the run (restart purges applied)."""
    acc = event_accumulator.EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalars_flatten_nested_numbers_and_leave_out_the_rest():
    record = {"step": 3, "loss": 1.5, "ok": True, "name": "x", "grid": (1, 2), "bad": float("nan"),
              "learned": {"knn": 0.9, "feature_dim": 256, "plot": "similarities.png", "deep": {"a": 1}}}
    assert scalars(record) == {"loss": 1.5, "learned/knn": 0.9, "learned/feature_dim": 256.0, "learned/deep/a": 1.0}


def test_every_scalar_of_every_record_is_an_event(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.jsonl", 0, tensorboard_dir=tmp_path / "tb")
    for step in range(3):
        writer.write({"step": step, "loss": 2.0 - step, "lr": 0.1 * step, "learned": {"knn": 0.5 + 0.1 * step}})
    writer.close()
    events = read_events(tmp_path / "tb")
    assert sorted(events) == ["learned/knn", "loss", "lr"]
    assert events["loss"] == [(0, 2.0), (1, 1.0), (2, 0.0)]
    assert [s for s, _ in events["learned/knn"]] == [0, 1, 2]
    assert events["learned/knn"][2][1] == pytest.approx(0.7)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1, 2]


def test_a_resumed_run_replaces_the_steps_it_recomputes(tmp_path):
    """Killed after step 9 with a checkpoint at 5: the resumed writer's steps 5-9 replace the first run's,
    in metrics.jsonl and in TensorBoard, with no step twice."""
    path, logdir = tmp_path / "metrics.jsonl", tmp_path / "tb"
    first = MetricsWriter(path, 0, tensorboard_dir=logdir)
    for step in range(10):
        first.write({"step": step, "loss": float(step)})
    first.close()
    resumed = MetricsWriter(path, 5, tensorboard_dir=logdir)
    for step in range(5, 10):
        resumed.write({"step": step, "loss": 100.0 + step})
    resumed.close()
    want = [(s, float(s)) for s in range(5)] + [(s, 100.0 + s) for s in range(5, 10)]
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == want
    assert read_events(logdir)["loss"] == want


def test_write_tensorboard_scalars_replaces_an_earlier_write_of_that_step(tmp_path):
    for value in (0.25, 0.75):  # e.g. eval.json of a finished run, and of the same run run again
        metrics_writer.write_tensorboard_scalars(tmp_path, 20, {"step": 20, "learned": {"linear_probe": value}})
    assert read_events(tmp_path) == {"learned/linear_probe": [(20, 0.75)]}
    metrics_writer.write_tensorboard_scalars(None, 20, {"step": 20, "x": 1.0})  # switched off: nothing


def test_other_processes_write_nothing(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.jsonl", 0, enabled=False, tensorboard_dir=tmp_path / "tb")
    writer.write({"step": 0, "loss": 1.0})
    writer.close()
    assert list(tmp_path.iterdir()) == []


def test_without_the_tensorboard_package_one_line_says_so_and_the_json_is_written(tmp_path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")]:
        monkeypatch.setitem(sys.modules, name, None)  # every `import tensorboard...` raises ImportError
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setattr(metrics_writer, "_told_not_installed", False)
    writers = [MetricsWriter(tmp_path / f"{name}.jsonl", 0, tensorboard_dir=tmp_path / "tb" / name)
               for name in ("metrics", "eval_history")]
    for writer in writers:
        writer.write({"step": 0, "loss": 1.0})
        writer.close()
    metrics_writer.write_tensorboard_scalars(tmp_path / "tb" / "eval", 0, {"step": 0, "loss": 1.0})
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "tensorboard package is not installed" in err[0] and "config.logging.tensorboard" in err[0]
    assert not (tmp_path / "tb").exists()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 0, "loss": 1.0}


@pytest.mark.slow
def test_a_run_writes_its_metrics_and_evaluations_as_events(tiny_config, tmp_path):
    from contrastive.train.runner import train_and_evaluate

    config = tiny_config(num_steps=4, **{"eval.at_end": True, "evals.probes.at_end": False,
                                        "evals.view_geometry.every_steps": 2, "evals.view_geometry.plot": False})
    results = train_and_evaluate(config, tmp_path)
    train = read_events(tmp_path / "tensorboard" / "train")
    metrics = read_metrics(tmp_path / "metrics.jsonl")
    assert set(train) == set(scalars(metrics[0]))
    assert train["loss"] == [(r["step"], pytest.approx(r["loss"])) for r in metrics]
    history = read_metrics(tmp_path / "eval_history.jsonl")
    evals = read_events(tmp_path / "tensorboard" / "eval")  # eval_history.jsonl at step 2, eval.json at 4
    assert evals["learned/alignment"] == [(2, pytest.approx(history[0]["learned"]["alignment"])),
                                          (4, pytest.approx(results["learned"]["alignment"]))]

    train_and_evaluate(tiny_config(num_steps=4, **{"logging.tensorboard": False}), tmp_path / "off")
    assert (tmp_path / "off" / "metrics.jsonl").exists() and not (tmp_path / "off" / "tensorboard").exists()
