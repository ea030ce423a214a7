"""A run whose step never returns still stops on SIGTERM/SIGINT: after the grace period, or at a second signal.

The step is made to block inside XLA (a `pure_callback` that waits forever), where no Python signal
handler can run: the state of a real hang (issue: W-MSE on a CPU host ignored SIGTERM).
"""

import signal
import subprocess
import sys
import time

import pytest

from contrastive.main import EXIT_INTERRUPTED
from contrastive.train.metrics_writer import read_metrics
from tests.train.test_runner import write_config

BLOCKING_RUN = """
import sys, threading
import contrastive
import jax, jax.numpy as jnp
from contrastive.main import run
from contrastive.train import runner

BLOCK_AT = int(sys.argv[1])  # the call of the train step that never returns
real = runner.make_train_step


def hang(x):
    print("step blocked", file=sys.stderr, flush=True)
    threading.Event().wait()
    return x


blocker = jax.jit(lambda x: jax.pure_callback(hang, jax.ShapeDtypeStruct((), x.dtype), x))


def make_train_step(*args, **kwargs):
    step, calls = real(*args, **kwargs), [0]

    def blocking_step(state, batch):
        calls[0] += 1
        if calls[0] == BLOCK_AT:
            blocker(jnp.zeros(())).block_until_ready()
        return step(state, batch)

    blocking_step.trace = step.trace
    return blocking_step


runner.make_train_step = make_train_step
sys.exit(run(sys.argv[2:]))
"""


def start_blocking_run(config, workdir, block_at):
    return subprocess.Popen([sys.executable, "-c", BLOCKING_RUN, str(block_at), "--config",
                             str(write_config(config, workdir)), "--workdir", str(workdir)],
                            stderr=subprocess.PIPE, text=True)


def wait_for_line(proc, text, timeout=300):
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, "run ended early:\n" + "".join(lines)
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError("timed out:\n" + "".join(lines))


@pytest.mark.slow
@pytest.mark.parametrize("signals", [1, 2])
def test_a_hung_step_is_stopped_at_once_naming_the_newest_checkpoint(tiny_config, tmp_path, signals):
    """One signal: exit after `stop_grace_s` (2 s here); two signals: exit at the second, not after 600 s."""
    grace = 2.0 if signals == 1 else 600.0
    config = tiny_config(num_steps=50, stop_grace_s=grace, **{"checkpoint.every_steps": 5})
    workdir = tmp_path / "run"
    proc = start_blocking_run(config, workdir, block_at=9)  # steps 0-7 done, step 8 hangs
    wait_for_line(proc, "step blocked")
    time.sleep(0.5)  # let orbax finish the step-5 checkpoint it writes in the background
    start = time.time()
    proc.send_signal(signal.SIGTERM)
    if signals == 2:
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    took = time.time() - start
    assert proc.returncode == EXIT_INTERRUPTED, err
    reason = "no step finished within 2 s of SIGTERM" if signals == 1 else "a second SIGINT came"
    assert reason in err and "exiting at once without saving" in err, err
    assert f"newest complete checkpoint is step 5 in {workdir / 'checkpoints'}" in err, err
    assert took < (grace + 10 if signals == 1 else 10)
    # Nothing half-done: whole metrics records up to the hung step, only complete checkpoints.
    assert [r["step"] for r in read_metrics(workdir / "metrics.jsonl")] == list(range(8))
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())[-1] == 5


def test_stop_request_restores_the_signal_handlers():
    from contrastive.train.stop import StopRequest

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with StopRequest(1.0, lambda: "none") as stop:
        assert signal.getsignal(signal.SIGTERM) != before[signal.SIGTERM]
        assert stop.signal is None
    assert {s: signal.getsignal(s) for s in before} == before
    assert signal.set_wakeup_fd(-1) == -1  # no wakeup fd left behind
