"""Start a multi-process job on this machine: a dry run of a pod job, and what the multi-host tests use.

    python -m contrastive.launch --num_processes 2 --devices_per_process 4 -- --config ... --workdir ...

Everything after `--` goes to every `python -m contrastive.main`, each with `--coordinator_address
localhost:PORT` (a free port), `--num_processes N --process_id I`, and `XLA_FLAGS` giving it
`--devices_per_process` virtual CPU devices (JAX_PLATFORMS=cpu unless set; the collectives run over gloo).

* Output: every line is prefixed with `[I] `, its process id; with `--quiet_others` process 0's output is
  shown as is and of the others only their errors (lines starting with `error`, and the end of stderr of a
  process that fails without such a line).
* SIGTERM and SIGINT are forwarded once to every process (each runs in its own session, so a Ctrl-C in the
  terminal reaches the processes only through the launcher, once); the job stops after one agreed step,
  saves a checkpoint and exits 143. A second signal is forwarded too (every process exits at once).
* The exit status is the first non-zero status of a process (a process killed by signal S counts as
  128 + S), or 0. When one process fails on its own, the others are sent SIGTERM, and SIGKILL after
  `--kill_after` seconds (after a 143 of one process, which the others agreed on, only the SIGKILL).
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time

EXIT_BAD_INPUT, EXIT_INTERRUPTED = 2, 143


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(prog="python -m contrastive.launch", description=__doc__.splitlines()[0],
                                     usage="%(prog)s --num_processes N [options] -- --config ... --workdir ...")
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--devices_per_process", type=int, default=1, help="virtual CPU devices of each process")
    parser.add_argument("--port", type=int, default=0, help="coordinator port on localhost (0: a free one)")
    parser.add_argument("--quiet_others", action="store_true",
                        help="show process 0's output, and of the others only their errors")
    parser.add_argument("--kill_after", type=float, default=30.0,
                        help="seconds between SIGTERM and SIGKILL for the others after one process failed")
    if "--" in argv:
        cut = argv.index("--")
        own, rest = argv[:cut], argv[cut + 1:]
    else:
        own, rest = argv, []
    args = parser.parse_args(own)
    if args.num_processes < 1:
        parser.error(f"--num_processes={args.num_processes} must be >= 1")
    if args.devices_per_process < 1:
        parser.error(f"--devices_per_process={args.devices_per_process} must be >= 1")
    if not rest:
        parser.error("give the arguments of contrastive.main after --, e.g. -- --config ... --workdir ...")
    return args, rest


def child_env(devices: int, environ=os.environ) -> dict:
    env = dict(environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _Relay:
    """Copies one stream of one process to ours, prefixing each line (or each progress-bar redraw, which
    ends with a carriage return) with `prefix`; `show(line)` says whether a line is shown."""

    def __init__(self, source, target, prefix: bytes, show, keep: int = 0):
        self.source, self.target, self.prefix, self.show = source, target, prefix, show
        self.tail: collections.deque = collections.deque(maxlen=keep)
        self.shown_error = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        pending = b""
        while True:
            chunk = self.source.read1(65536) if hasattr(self.source, "read1") else self.source.read(65536)
            if not chunk:
                break
            pending += chunk
            while True:
                cut = min((i for i in (pending.find(b"\n"), pending.find(b"\r")) if i >= 0), default=-1)
                if cut < 0:
                    break
                self._emit(pending[:cut + 1])
                pending = pending[cut + 1:]
        if pending:
            self._emit(pending + b"\n")

    def _emit(self, line: bytes):
        self.tail.append(line)
        if self.show(line):
            self.shown_error = self.shown_error or _is_error(line)
            with _OUTPUT_LOCK:
                self.target.write(self.prefix + line)
                self.target.flush()


_OUTPUT_LOCK = threading.Lock()


def _any(line: bytes) -> bool:
    return True


def _is_error(line: bytes) -> bool:
    return line.lstrip().lower().startswith(b"error")


def launch(args, rest: list[str]) -> int:
    port = args.port or free_port()
    env = child_env(args.devices_per_process)
    procs, relays = [], []
    for i in range(args.num_processes):
        cmd = [sys.executable, "-m", "contrastive.main", *rest, "--coordinator_address", f"localhost:{port}",
               "--num_processes", str(args.num_processes), "--process_id", str(i)]
        quiet = args.quiet_others and i > 0
        primary_raw = args.quiet_others and i == 0
        out = None if primary_raw else subprocess.PIPE
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True)
        procs.append(proc)
        if not primary_raw:
            prefix = f"[{i}] ".encode()
            relays.append((i, _Relay(proc.stdout, sys.stdout.buffer, prefix, (lambda line: False) if quiet else _any),
                           _Relay(proc.stderr, sys.stderr.buffer, prefix, _is_error if quiet else _any,
                                  keep=20 if quiet else 0)))

    forwarded = []

    def forward(signum, frame):
        del frame
        forwarded.append(signum)
        for p in procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signum)
                except ProcessLookupError:
                    pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = _wait_all(procs, args.kill_after, forwarded)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for i, out_relay, err_relay in relays:
        out_relay.thread.join(timeout=5)
        err_relay.thread.join(timeout=5)
        if args.quiet_others and procs[i].returncode != 0 and not err_relay.shown_error:
            with _OUTPUT_LOCK:  # a failure without an `error:` line: show how its stderr ended
                for line in err_relay.tail:
                    sys.stderr.buffer.write(f"[{i}] ".encode() + line)
                sys.stderr.flush()
    return status


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _wait_all(procs, kill_after: float, forwarded: list) -> int:
    """The first non-zero exit status (0 when all succeed). After a process fails without a forwarded
    signal, the others get SIGTERM and, `kill_after` seconds later, SIGKILL."""
    first, kill_at = 0, None
    while True:
        running = [p for p in procs if p.poll() is None]
        for p in procs:
            if p.returncode not in (None, 0) and not first:
                first = _exit_status(p.returncode)
                if forwarded or not running:
                    continue
                # 143: a signal to that process, which the others agreed on; they are saving the same step
                # and exit on their own. Any other failure: stop the others.
                if first != EXIT_INTERRUPTED:
                    for q in running:
                        try:
                            os.kill(q.pid, signal.SIGTERM)
                        except ProcessLookupError:
                            pass
                kill_at = time.monotonic() + kill_after
        if not running:
            return first
        if kill_at is not None and time.monotonic() > kill_at:
            for q in running:
                try:
                    os.kill(q.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            kill_at = None
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(sys.argv[1:] if argv is None else argv)
    return launch(args, rest)


if __name__ == "__main__":
    sys.exit(main())
