"""Train one config with several seeds and report its probes as mean +- std beside the baselines.

    python experiments/seeds.py                      # the default run, seeds 0 1 2
    python experiments/seeds.py --config configs/simclr_digits.py --seeds 0 1 2 --config.num_steps=200

Writes `experiments/results/<config>_seeds.md` and, for the default config, the results table in
README.md (between the `results:begin/end` markers). Each seed trains in `<workdir>/seed<k>` and is
resumed, not retrained, if that workdir already holds a finished run.
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
from contrastive.train.evaluators import REPRESENTATIONS  # noqa: E402
from contrastive.train.runner import train_and_evaluate  # noqa: E402
from experiments.readme_block import update_readme_block  # noqa: E402


def summarise(per_seed: list[dict], seeds: list[int], title: str, command: str) -> str:
    def stats(name, metric):
        values = np.array([100 * r[name][metric] for r in per_seed])
        return values, f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.2f}"

    lines = [f"**{title}**, {len(seeds)} seeds ({', '.join(map(str, seeds))}); test accuracy in %, "
             "mean ± sample std, then each seed.", "",
             "| features | dim | linear probe | kNN | linear probe per seed | kNN per seed |",
             "|---|---|---|---|---|---|"]
    for name in REPRESENTATIONS:
        lp, lp_text = stats(name, "linear_probe")
        knn, knn_text = stats(name, "knn")
        lines.append(f"| {name} | {per_seed[0][name]['feature_dim']} | {lp_text} | {knn_text} | "
                     f"{' / '.join(f'{v:.2f}' for v in lp)} | {' / '.join(f'{v:.2f}' for v in knn)} |")
    first = per_seed[0]
    lines += ["", f"kNN: k={first['knn_k']}, T={first['knn_temperature']}, cosine; linear probe: multinomial "
              f"logistic regression, L2 chosen on a held-out fifth of train. Train {first['num_train']} / "
              f"test {first['num_test']} images.", "", f"Produced by `{command}`."]
    for metric, label in (("linear_probe", "linear probe"), ("knn", "kNN")):
        learned = np.mean([r["learned"][metric] for r in per_seed])
        rivals = {n: np.mean([r[n][metric] for r in per_seed]) for n in ("random_init", "raw_pixels")}
        verdict = "beat" if all(learned > v for v in rivals.values()) else "do NOT beat"
        lines.append(f"Mean {label}: the learned features {verdict} both baselines "
                     f"({100 * learned:.2f} vs random init {100 * rivals['random_init']:.2f}, "
                     f"raw pixels {100 * rivals['raw_pixels']:.2f}).  ")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/simclr_digits.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default="runs/seeds")
    parser.add_argument("--no-readme", action="store_true", help="do not update README.md")
    args, rest = parser.parse_known_args(argv)
    overrides = config_lib.parse_overrides(rest)
    name = pathlib.Path(args.config.partition(":")[0]).stem

    per_seed = []
    for seed in args.seeds:
        config = config_lib.load_config(args.config, overrides)
        config.seed = seed
        config.progress = False
        start = time.perf_counter()
        result = train_and_evaluate(config, pathlib.Path(args.workdir) / name / f"seed{seed}")
        print(f"seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
        per_seed.append(result)

    command = " ".join(["python experiments/seeds.py", *(argv if argv is not None else sys.argv[1:])]).strip()
    table = summarise(per_seed, args.seeds, f"{name}", command)
    out = ROOT / "experiments" / "results" / f"{name}_seeds.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# {name}: linear probe and kNN over seeds\n\n{table}")
    (out.with_suffix(".json")).write_text(json.dumps(dict(zip(map(str, args.seeds), per_seed)), indent=2))
    print(table)
    if not args.no_readme and name == "simclr_digits" and not overrides:
        update_readme_block("results", table)


if __name__ == "__main__":
    main()
