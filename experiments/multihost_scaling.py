"""One config with 1, 2 and 4 local processes over the same 8 devices: step time and examples/s side by side.

    python experiments/multihost_scaling.py                                  # simclr_digits, 1 2 4 processes
    python experiments/multihost_scaling.py --processes 1 2 --rounds 2 --config.num_steps=100

Each case trains the config from scratch in a fresh workdir with `8 / P` virtual CPU devices in each of P
processes (one process: `python -m contrastive.main` with 8 devices, no distributed system; more:
`python -m contrastive.launch`, whose processes talk over gloo on localhost), with the final evaluation
off. Cases alternate over `--rounds` so drift of a shared machine hits all alike. Reported per case: the
median step time and examples/s over the logged intervals after the first (the first holds the
compilation), and the wall clock of the whole command (start-up, compilation, checkpoints included).

On one CPU host this measures only what the multi-process machinery costs: the 8 "devices" share the
same cores in every case, so more processes cannot be faster; the gap is the price of the cross-process
collectives (gloo over TCP instead of shared memory) and of the per-process start-up. On a pod each
process has its own accelerators and host, which this cannot show.
Writes `experiments/results/multihost_scaling.md` (+ .json).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOTAL_DEVICES = 8


def command(num_processes: int, config: str, workdir: pathlib.Path, overrides: list[str]) -> tuple[list, dict]:
    """The command line and environment of one case."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    job = ["--config", config, "--workdir", str(workdir), "--config.eval.at_end=False", *overrides]
    if num_processes == 1:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={TOTAL_DEVICES}"
        return [sys.executable, "-m", "contrastive.main", *job], env
    return [sys.executable, "-m", "contrastive.launch", "--num_processes", str(num_processes),
            "--devices_per_process", str(TOTAL_DEVICES // num_processes), "--quiet_others", "--", *job], env


def rates(workdir: pathlib.Path) -> list[float]:
    """examples/s of each logged interval after the first (which holds the compilation)."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["examples_per_s"] for line in lines[1:] if line.strip()]


def run_case(num_processes: int, config: str, overrides: list[str], batch_size: int) -> dict:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"scaling_p{num_processes}_"))
    try:
        cmd, env = command(num_processes, config, workdir, overrides)
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise SystemExit(f"{num_processes} process(es) failed with status {done.returncode}:\n" + "\n".join(tail))
        measured = rates(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not measured:
        raise SystemExit("no interval after the first was logged: raise --config.num_steps or lower log_every")
    median = float(np.median(measured))
    return {"processes": num_processes, "devices_per_process": TOTAL_DEVICES // num_processes,
            "examples_per_s": median, "step_ms": 1e3 * batch_size / median, "wall_s": wall,
            "intervals": len(measured)}


def summarise(rows: list[dict], config: str, batch_size: int, num_steps: int, argv: list[str]) -> str:
    by_p: dict[int, list[dict]] = {}
    for row in rows:
        by_p.setdefault(row["processes"], []).append(row)
    base = np.median([r["examples_per_s"] for r in by_p[min(by_p)]])
    lines = [f"`{config}`, global batch {batch_size}, {num_steps} steps, {TOTAL_DEVICES} virtual CPU devices in "
             f"all, final evaluation off; {platform.machine()} CPU with {os.cpu_count()} cores. Median over the "
             "logged intervals after the first, and over rounds; wall: the whole command.", "",
             "| processes x devices | step (ms) | examples/s | relative to 1 process | wall (s) | rounds |",
             "|---|---|---|---|---|---|"]
    for p, runs in sorted(by_p.items()):
        rate = float(np.median([r["examples_per_s"] for r in runs]))
        step = float(np.median([r["step_ms"] for r in runs]))
        wall = float(np.median([r["wall_s"] for r in runs]))
        lines.append(f"| {p} x {TOTAL_DEVICES // p} | {step:.1f} | {rate:.0f} | {rate / base:.2f} | {wall:.1f} | "
                     f"{len(runs)} |")
    lines += ["", "One CPU host: every case shares the same cores, so this is the cost of the cross-process "
              "collectives (gloo over TCP) and start-up, not a speed-up a pod would show.", "",
              f"Produced by `{shlex.join(['python', 'experiments/multihost_scaling.py', *argv])}`."]
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/simclr_digits.py")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--num_steps", type=int, default=200)
    parser.add_argument("--out", default="multihost_scaling", help="name under experiments/results/ ('' : none)")
    args, overrides = parser.parse_known_args(argv)
    bad = [p for p in args.processes if p < 1 or TOTAL_DEVICES % p]
    if bad:
        parser.error(f"--processes must divide {TOTAL_DEVICES}: {bad}")
    sys.path.insert(0, str(ROOT))
    from contrastive.train import config as config_lib

    overrides = [f"--config.num_steps={args.num_steps}", *overrides]
    batch_size = config_lib.load_config(args.config, config_lib.parse_overrides(overrides)).batch_size
    rows = []
    for round_ in range(args.rounds):
        for p in args.processes:
            row = run_case(p, args.config, overrides, batch_size) | {"round": round_}
            print(json.dumps(row), flush=True)
            rows.append(row)
    table = summarise(rows, args.config, batch_size, args.num_steps, argv)
    print(table)
    if args.out:
        out = ROOT / "experiments" / "results" / args.out
        out.with_suffix(".md").write_text(f"# Multi-process overhead on one host\n\n{table}\n")
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
