"""`<workdir>/metrics.jsonl`: one JSON object per logged step; and the same scalars as TensorBoard events.

With `config.logging.tensorboard` (default True) and the `tensorboard` package installed (the
`[tensorboard]` extra; TensorFlow is not needed), every number of every record is also written as a
TensorBoard scalar: metrics.jsonl to `<workdir>/tensorboard/train`, eval_history.jsonl and eval.json to
`<workdir>/tensorboard/eval`, nested keys joined by '/' (`learned/linear_probe`). Without the package one
line on stderr says so and the run goes on. View them with `tensorboard --logdir <workdir>`.

On resume at step s the JSON file drops its records of steps >= s; event files cannot be edited, so
the new event file starts with a `SessionLog.START` event at step s, on which TensorBoard drops the events
of steps >= s that the earlier files hold (its purge of orphaned data after a restart).
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import threading
import time

# Held while a record is appended, so that a hard exit (contrastive.train.stop) never cuts one in half.
WRITE_LOCK = threading.Lock()
_told_not_installed = False


def read_metrics(path: pathlib.Path) -> list[dict]:
    """The records of a metrics file; a last line cut short (a SIGKILL mid-write) is dropped."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise
    return records


def tensorboard_dir(config, workdir: pathlib.Path, run: str) -> pathlib.Path | None:
    """`<workdir>/tensorboard/<run>` when `config.logging.tensorboard`, else None."""
    return pathlib.Path(workdir) / "tensorboard" / run if config.logging.tensorboard else None


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of `record` (nested dicts flattened, keys joined by '/'), but its 'step' and
    booleans; strings, lists and None are left out."""
    out = {}
    for key, value in record.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, tag + "/"))
        elif isinstance(value, int | float) and not isinstance(value, bool) and tag != "step" \
                and math.isfinite(value):
            out[tag] = float(value)
    return out


class TensorBoardWriter:
    """Scalars as TensorBoard events in `logdir`, the first event a restart marker at `start_step`."""

    def __init__(self, logdir: pathlib.Path, start_step: int):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = event_pb2, summary_pb2
        pathlib.Path(logdir).mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(logdir))
        self._writer.add_event(event_pb2.Event(step=int(start_step), wall_time=time.time(),
                                               session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

    def write(self, step: int, record: dict) -> None:
        values = [self._summary.Summary.Value(tag=tag, simple_value=v) for tag, v in scalars(record).items()]
        self._writer.add_event(self._event.Event(step=int(step), wall_time=time.time(),
                                                 summary=self._summary.Summary(value=values)))
        self._writer.flush()  # every record on disk as it is logged: a killed run keeps what it logged

    def close(self) -> None:
        self._writer.close()


def tensorboard_writer(logdir: pathlib.Path | None, start_step: int) -> TensorBoardWriter | None:
    """A `TensorBoardWriter`, or None without `logdir` or without the tensorboard package (said once)."""
    global _told_not_installed
    if logdir is None:
        return None
    try:
        return TensorBoardWriter(logdir, start_step)
    except ImportError:
        if not _told_not_installed:
            print("config.logging.tensorboard: the tensorboard package is not installed, so no TensorBoard event "
                  "files are written (pip install 'contrastive[tensorboard]', or set "
                  "config.logging.tensorboard=False)", file=sys.stderr)
            _told_not_installed = True
        return None


def write_tensorboard_scalars(logdir: pathlib.Path | None, step: int, record: dict) -> None:
    """`record`'s scalars at `step` in a new event file of `logdir` (e.g. eval.json's), replacing any
    earlier events of steps >= `step` there; nothing without `logdir` or the package."""
    writer = tensorboard_writer(logdir, step)
    if writer is not None:
        writer.write(step, record)
        writer.close()


class MetricsWriter:
    """Appends records; on resume at step s, first drops the records of steps >= s.

    Those records came from a run that was killed after its last checkpoint; the resumed run recomputes
    the same steps, so keeping both would list those steps twice. With `enabled=False` (every process of a
    multi-process job but process 0) it neither reads nor writes anything. With `tensorboard_dir`, each
    record's scalars also go to TensorBoard events there at the record's 'step' (see the module docstring).
    """

    def __init__(self, path: pathlib.Path, start_step: int, *, enabled: bool = True,
                 tensorboard_dir: pathlib.Path | None = None):
        self.path, self.enabled, self.tensorboard = path, enabled, None
        if not enabled:
            return
        kept = [r for r in read_metrics(path) if r["step"] < start_step]
        if path.exists():
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            tmp.replace(path)
        self.tensorboard = tensorboard_writer(tensorboard_dir, start_step)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with WRITE_LOCK:
            with self.path.open("a") as f:
                f.write(json.dumps(clean) + "\n")
            if self.tensorboard is not None:
                self.tensorboard.write(record["step"], record)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
