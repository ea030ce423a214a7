"""`<workdir>/metrics.jsonl`: one JSON object per logged step."""

from __future__ import annotations

import json
import math
import pathlib
import threading

# Held while a record is appended, so that a hard exit (contrastive.train.stop) never cuts one in half.
WRITE_LOCK = threading.Lock()


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


class MetricsWriter:
    """Appends records; on resume at step s, first drops the records of steps >= s.

    Those records came from a run that was killed after its last checkpoint; the resumed run recomputes
    the same steps, so keeping both would list those steps twice. With `enabled=False` (every process of a
    multi-process job but process 0) it neither reads nor writes anything.
    """

    def __init__(self, path: pathlib.Path, start_step: int, *, enabled: bool = True):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = [r for r in read_metrics(path) if r["step"] < start_step]
        if path.exists():
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            tmp.replace(path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with WRITE_LOCK, self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
