"""Stopping a run on SIGTERM/SIGINT: cleanly after the step in flight, or at once when that step hangs.

* The first SIGTERM or SIGINT asks the train loop to stop after the current step: it saves a checkpoint
  there and the command exits with status 143.
* If no step finishes within `grace_s` seconds of that first signal, or a second signal comes, the
  process exits at once (status 143) with a message saying that the step did not finish and naming the
  newest complete checkpoint, from which the same command resumes.

A Python signal handler runs only when the main thread is back in the interpreter; a step stuck inside
XLA never gets there (that is how a hung run used to ignore SIGTERM). So the signals are also delivered
to a watcher thread through `signal.set_wakeup_fd`, whose C-level handler writes the signal number to a
pipe whatever the main thread is doing. The hard exit writes nothing half-done: metrics records are
appended whole under `metrics_writer.WRITE_LOCK`, which the exit takes first, and a checkpoint that orbax
has not finished is a temporary folder that the resume never reads.

In a multi-process job the processes must stop after the same step and save the same checkpoint
together, whichever of them got the signal: `agreed` is that decision, taken with one all-gather of every
process's stop flag at the steps where the loop syncs with the host anyway (logging, saving, the end),
which every process reaches in the same order.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

from contrastive.train.metrics_writer import WRITE_LOCK

EXIT_INTERRUPTED = 143  # 128 + SIGTERM, for SIGINT too: "stopped, run the same command to resume"
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Context manager around the train loop: `signal` is set once a stop was asked for.

    The loop calls `step_finished()` whenever a step's results have reached the host; the watcher
    waits up to `grace_s` after the first signal for that. `newest_checkpoint()` describes, for the
    message of a hard exit, the newest complete checkpoint.
    """

    def __init__(self, grace_s: float, newest_checkpoint: Callable[[], str]):
        self.grace_s = grace_s
        self.newest_checkpoint = newest_checkpoint
        self.signal: str | None = None
        self._progress = 0  # how many times a step's results reached the host
        self._closed_event = threading.Event()
        self._previous: dict = {}
        self._pipe: tuple[int, int] | None = None
        self._previous_fd = -1
        self._watcher: threading.Thread | None = None
        self._closed = False

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread: leave the defaults
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        self._previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._watcher = threading.Thread(target=self._watch, name="contrastive-stop-watcher", daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc):
        self._closed = True
        self._closed_event.set()  # a grace timer still running has nothing left to guard
        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._previous_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        os.close(self._pipe[1])  # the watcher reads end-of-file and returns
        self._watcher.join(timeout=5)
        os.close(self._pipe[0])
        self._pipe = None

    def _handle(self, signum, frame):  # main thread, when it gets back to the interpreter
        del frame
        self.signal = self.signal or signal.Signals(signum).name

    def step_finished(self) -> None:
        self._progress += 1

    def agreed(self, sync_point: bool) -> bool:
        """Whether the loop stops after this step. One process: as soon as a signal came. Many: only at a
        `sync_point` (a step at which every process calls this), and then every process stops if any of
        them got a signal; `signal` then names it on all."""
        import jax

        if jax.process_count() == 1:
            return self.signal is not None
        if not sync_point:
            return False
        import numpy as np
        from jax.experimental import multihost_utils

        mine = int(signal.Signals[self.signal]) if self.signal in signal.Signals.__members__ else 0
        codes = np.asarray(multihost_utils.process_allgather(np.int32(mine))).ravel()
        if not codes.any():
            return False
        if self.signal is None:
            first = int(np.flatnonzero(codes)[0])
            self.signal = f"{signal.Signals(int(codes[first])).name} on process {first}"
        return True

    def _watch(self) -> None:
        read_fd = self._pipe[0]
        count = 0
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum not in {int(s) for s in SIGNALS}:
                    continue
                name = signal.Signals(signum).name
                count += 1
                if count == 1:
                    self.signal = self.signal or name
                    sys.stderr.write(f"\n{name}: stopping after the current step and saving a checkpoint; a second "
                                     f"signal exits at once, and so does no step finishing within "
                                     f"{self.grace_s:g} s\n")
                    sys.stderr.flush()
                    threading.Thread(target=self._await_step, args=(name, self._progress), daemon=True).start()
                else:
                    self._exit_now(f"a second {name} came before the current step and its checkpoint were done")

    def _await_step(self, name: str, seen: int) -> None:
        """After `grace_s`, exit unless a step finished since the signal or the loop has ended. (A step that
        finished between the signal and this thread's start counts as none; if the save after it then
        takes longer than `grace_s`, the exit leaves that checkpoint unfinished, which no resume reads.)"""
        if self._closed_event.wait(self.grace_s):
            return
        if self._progress == seen:
            self._exit_now(f"no step finished within {self.grace_s:g} s of {name}: the step in flight hung")

    def _exit_now(self, reason: str) -> None:
        WRITE_LOCK.acquire(timeout=10)  # never leave a metrics record half-written
        try:
            newest = self.newest_checkpoint()
        except Exception as e:  # noqa: BLE001 - the exit must not fail on the message
            newest = f"unknown ({type(e).__name__}: {e})"
        sys.stderr.write(f"\nerror: {reason}; exiting at once without saving. The newest complete checkpoint "
                         f"is {newest}; run the same command to resume from it.\n")
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
