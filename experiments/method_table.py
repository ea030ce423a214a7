"""Train every method on the digits with several seeds and tabulate its probes beside its own random init.

    python experiments/method_table.py                       # all methods, seeds 0 1 2
    python experiments/method_table.py --methods byol moco --seeds 0 --config.num_steps=100

For each method: linear probe and kNN test accuracy of the learned features and of the same encoder at
initialisation (same seed, no training), mean +- sample std over seeds, and training steps/s (the median
of the logged examples/s over the run, after the first log, divided by the batch size; same machine, same
run, so the column compares methods). Writes `experiments/results/method_table.md` (+ .json) and, for the
full default run, the README block `method-table`. A method's run is resumed, not retrained, when its
workdir already holds a finished run.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contrastive.train import config as config_lib  # noqa: E402
from contrastive.train.metrics_writer import read_metrics  # noqa: E402
from contrastive.train.runner import train_and_evaluate  # noqa: E402
from experiments.readme_block import update_readme_block  # noqa: E402

# label -> (config spec, what it is)
METHODS = {
    "simclr": ("configs/simclr_digits.py", "SimCLR / NT-Xent (reference)"),
    "byol": ("configs/byol_digits.py", "BYOL: EMA target + MLP predictor"),
    "simsiam": ("configs/simsiam_digits.py", "SimSiam: stop-gradient + MLP predictor"),
    "directpred": ("configs/directpred_digits.py", "DirectPred: BYOL with the closed-form predictor"),
    "wmse": ("configs/wmse_digits.py", "W-MSE 2: whitened MSE"),
    "moco": ("configs/moco_digits.py", "MoCo v2: EMA keys + queue"),
    "moco_mochi": ("configs/moco_digits.py:mochi", "MoCo v2 + MoCHi hard-negative mixing"),
    "moco_ft": ("configs/moco_digits.py:ft", "MoCo v2 + feature transformation"),
}


def steps_per_second(workdir: pathlib.Path, batch_size: int) -> float:
    rates = [r["examples_per_s"] for r in read_metrics(workdir / "metrics.jsonl")][1:]  # the first has the compile
    return float(np.median(rates)) / batch_size if rates else float("nan")


def summarise(rows: dict, seeds: list[int], command: str) -> str:
    def stat(values):
        values = 100 * np.asarray(values)
        return f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.2f}"

    lines = [f"Digits (1,352 train / 445 test), {len(seeds)} seeds ({', '.join(map(str, seeds))}); test accuracy in "
             "%, mean ± sample std. *random init* is the same encoder before training (same seed).", "",
             "| method | steps | linear probe | kNN | random init: linear probe | random init: kNN | beats its random "
             "init | steps/s |", "|---|---|---|---|---|---|---|---|"]
    for label, runs in rows.items():
        def get(rep, metric, runs=runs):
            return [r["eval"][rep][metric] for r in runs]

        beats = all(np.mean(get("learned", m)) > np.mean(get("random_init", m)) for m in ("linear_probe", "knn"))
        lines.append(f"| {label}: {METHODS[label][1]} | {runs[0]['eval']['step']} | "
                     f"{stat(get('learned', 'linear_probe'))} | "
                     f"{stat(get('learned', 'knn'))} | {stat(get('random_init', 'linear_probe'))} | "
                     f"{stat(get('random_init', 'knn'))} | {'yes' if beats else 'NO'} | "
                     f"{np.mean([r['steps_per_s'] for r in runs]):.1f} |")
    first = next(iter(rows.values()))[0]["eval"]
    lines += ["", f"kNN: k={first['knn_k']}, T={first['knn_temperature']}, cosine; linear probe: multinomial logistic "
              "regression with L2 chosen on a held-out fifth of train. *beats its random init*: the mean linear "
              "probe and the mean kNN accuracy both exceed the random-init ones."]
    for metric, name in (("linear_probe", "linear probe"), ("knn", "kNN")):
        close = []
        for label, runs in rows.items():
            learned = [r["eval"]["learned"][metric] for r in runs]
            rand = [r["eval"]["random_init"][metric] for r in runs]
            spread = max(np.std(learned, ddof=1), np.std(rand, ddof=1)) if len(runs) > 1 else 0.0
            if np.mean(learned) - np.mean(rand) <= spread:
                close.append(label)
        if close:
            lines.append(f"Mean {name} margin over the random init no larger than a seed's std (learned or random "
                         f"init): {', '.join(close)}.")
    lines += ["steps/s: the median over the run of the logged examples/s / batch size, on a shared 2-core CPU where "
              "the same config varies by up to ~30% between seeds; read only large differences.", "",
              f"Produced by `{command}`."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default="runs/method_table")
    parser.add_argument("--no-readme", action="store_true", help="do not update README.md")
    args, rest = parser.parse_known_args(argv)
    overrides = config_lib.parse_overrides(rest)

    rows = {}
    for label in args.methods:
        rows[label] = []
        for seed in args.seeds:
            config = config_lib.load_config(METHODS[label][0], overrides)
            config.seed, config.progress = seed, False
            workdir = pathlib.Path(args.workdir) / label / f"seed{seed}"
            start = time.perf_counter()
            result = train_and_evaluate(config, workdir)
            rate = steps_per_second(workdir, config.batch_size)
            print(f"{label} seed {seed}: {time.perf_counter() - start:.0f} s, {rate:.1f} steps/s, linear probe "
                  f"{100 * result['learned']['linear_probe']:.2f}% (random init "
                  f"{100 * result['random_init']['linear_probe']:.2f}%)", flush=True)
            rows[label].append({"seed": seed, "eval": result, "steps_per_s": rate})

    command = " ".join(["python experiments/method_table.py", *(argv if argv is not None else sys.argv[1:])]).strip()
    table = summarise(rows, args.seeds, command)
    out = ROOT / "experiments" / "results" / "method_table.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# Methods on the digits: linear probe and kNN over seeds\n\n{table}")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    print(table)
    if not args.no_readme and not overrides and args.methods == list(METHODS):
        update_readme_block("method-table", table)


if __name__ == "__main__":
    main()
