"""Train the photo-digits configs with several seeds; tabulate learned vs random-init vs raw-pixel probes.

    python experiments/photo_digits_table.py                              # simclr byol moco clip, seeds 0 1 2
    python experiments/photo_digits_table.py --configs simclr --seeds 0   # one run
    python experiments/photo_digits_table.py --configs simclr --seeds 0 --config.num_steps=100
    python experiments/photo_digits_table.py --recipe large                # on photo_digits_large
    python experiments/photo_digits_table.py --configs clip --attributes   # + what the features kept
    python experiments/photo_digits_table.py --recipe large --attributes colour photo
    python experiments/photo_digits_table.py --readme                      # the README's table, from results/

For each config and seed: linear probe and kNN test accuracy of the learned features and of the same
encoder at initialisation (same seed, no training; the image tower for clip), the training steps and the
minutes the run took (training and evaluation, wall clock). Raw pixels do not depend on the config (the
captioned variants hold the same images), so their probes are fitted once per seed and recipe (the seed
picks the probe's held-out fifth), kept in `<workdir>/raw_pixels/<dataset>_seed<k>.json` for later
invocations, and form their own row. With `--attributes` the runs are also evaluated by the `attributes`
evaluator (linear probe and kNN of the digit's colour name, its place in the image and the background
photo, learned vs random init), tabulated beside the digit; a finished run is then only evaluated again.
Writes `experiments/results/photo_digits_table.md` (+ .json). A run whose workdir already holds a
finished run is resumed, not retrained: its minutes are those its training invocation wrote to
`<workdir>/minutes.json`, and where that is missing the run is left out of the minutes column (which says
how many runs it averages).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contrastive.data import pipeline  # noqa: E402
from contrastive.train import config as config_lib  # noqa: E402
from contrastive.train import evaluators  # noqa: E402
from contrastive.train.runner import train_and_evaluate  # noqa: E402
from experiments.method_table import steps_per_second  # noqa: E402
from experiments.readme_block import update_readme_block  # noqa: E402

RESULTS = ROOT / "experiments" / "results"
# The saved results the README's table shows (`--readme`), in its row order.
README_RESULTS = [f"photo_digits_table_{name}" for name in (
    "simclr", "simclr_1200", "moco", "byol", "clip", "simclr_large", "simclr_large_t01", "simclr_large_800",
    "moco_large", "moco_large_2000", "clip_large", "clip_large_2000", "byol_large_400", "byol_large_800",
    "byol_large_2000")]
# The README rows of results that changed a setting of their config other than the steps: what changed.
README_CHANGES = {"photo_digits_table_simclr_large_t01": "temperature 0.1 (config: 0.2)"}

# label -> (config spec, what it is)
CONFIGS = {
    "simclr": ("configs/simclr_photo_digits.py", "SimCLR / NT-Xent"),
    "byol": ("configs/byol_photo_digits.py", "BYOL: EMA target + MLP predictor"),
    "moco": ("configs/moco_photo_digits.py", "MoCo v2: EMA keys + queue"),
    "clip": ("configs/clip_photo_digits.py", "CLIP on the captions (image tower)"),
}


def stat(values) -> str:
    """Mean ± sample std in %; one value alone (it has no sample spread)."""
    values = 100 * np.asarray(values, float)
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def raw_pixel_probes(config, seed: int) -> dict:
    """The probes of the flattened [0, 1] pixels of the config's train and test splits."""
    splits = {}
    for split in (config.data.train_split, config.data.test_split):
        data = pipeline.read_all(pipeline.data_source(config.data.name, split, config.data.data_dir),
                                 ("image", "label"))
        pixels = data["image"].reshape(len(data["image"]), -1).astype(np.float32)
        splits[split] = pixels / pipeline.max_pixel_value(config.data.name), data["label"]
    options = config.evals.probes
    return evaluators.probe_features(seed, *splits[config.data.train_split], *splits[config.data.test_split],
                                     knn_k=options.knn_k, knn_temperature=options.knn_temperature)


def run_minutes(workdir: pathlib.Path, elapsed: float, resumed: bool) -> float | None:
    """The minutes a run took to train and evaluate: `elapsed` for a fresh run (kept in the workdir), else
    the kept value of the invocation that trained it (None where none was kept)."""
    kept = workdir / "minutes.json"
    if not resumed:
        kept.write_text(json.dumps({"minutes": elapsed}))
        return elapsed
    return json.loads(kept.read_text())["minutes"] if kept.exists() else None


def run_cells(runs: list[dict]) -> list[str]:
    """steps, linear probe, kNN (learned, then random init), minutes per run and steps/s of one config's runs.
    The minutes average the runs that were timed (a run resumed from a workdir that kept none is not)."""
    def get(rep, metric):
        return stat([r["eval"][rep][metric] for r in runs])

    timed = [r["minutes"] for r in runs if r["minutes"] is not None]
    minutes = "-" if not timed else f"{np.mean(timed):.1f}" + (
        f" ({len(timed)} of {len(runs)} runs timed)" if len(timed) < len(runs) else "")
    return [f"{runs[0]['eval']['step']:,}", get("learned", "linear_probe"), get("learned", "knn"),
            get("random_init", "linear_probe"), get("random_init", "knn"), minutes,
            f"{np.mean([r['steps_per_s'] for r in runs]):.2f}"]


def raw_cells(raw: list[dict]) -> list[str]:
    """The same columns for the raw-pixel probes."""
    return ["-", stat([r["linear_probe"] for r in raw]), stat([r["knn"] for r in raw]), "-", "-", "-", "-"]


def readme_table(names: list[str]) -> str:
    """The README's table: a row per config of each saved result (`experiments/results/<name>.json`, in the
    order given) and, per dataset, the raw pixels of the first result on it."""
    lines = ["| data | features | seeds | steps | linear probe | kNN | random init: linear probe | random init: kNN "
             "| minutes per run | steps/s | results |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    raw_rows = {}
    for name in names:
        result = json.loads((RESULTS / f"{name}.json").read_text())
        seeds = ", ".join(map(str, result["seeds"]))
        for label, runs in result["runs"].items():
            what = CONFIGS[label][1] + (f", {README_CHANGES[name]}" if name in README_CHANGES else "")
            lines.append(f"| `{result['dataset']}` | {what} | {seeds} | " + " | ".join(run_cells(runs))
                         + f" | `{name}` |")
        raw_rows.setdefault(result["dataset"], f"| `{result['dataset']}` | raw pixels (3,072 values) | {seeds} | "
                            + " | ".join(raw_cells(result["raw_pixels"])) + f" | `{name}` |")
    return "\n".join([*lines, *raw_rows.values()]) + "\n"


def machine() -> str:
    """What the runs ran on, for the minutes' footnote: `2-core CPU`, `1 x NVIDIA H200`."""
    device = jax.devices()[0]
    return f"{os.cpu_count()}-core CPU" if device.platform == "cpu" else f"{jax.device_count()} x {device.device_kind}"


def summarise(rows: dict, raw: list[dict], seeds: list[int], command: str, dataset: str = "photo_digits",
              on: str | None = None) -> str:
    """The results file's text; `on`: the machine the minutes were measured on (default: this one)."""
    lines = [f"`{dataset}` (10,000 train / 2,000 test, 32x32 RGB, 10 balanced classes: chance 10%), "
             f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}); test accuracy in %, mean ± sample std. "
             "*random init*: the same encoder before training (same seed).", "",
             "| features | steps | linear probe | kNN | random init: linear probe | random init: kNN | minutes per run "
             "| steps/s |", "|---|---|---|---|---|---|---|---|"]
    for label, runs in rows.items():
        lines.append(f"| {label}: {CONFIGS[label][1]} | " + " | ".join(run_cells(runs)) + " |")
    lines.append("| raw pixels (3,072 values) | " + " | ".join(raw_cells(raw)) + " |")
    shots = [f"{label} {stat([r['eval']['zero_shot'] for r in runs])}" for label, runs in rows.items()
             if "zero_shot" in runs[0]["eval"]]
    if shots:  # the image-text configs: the digit named by prompts alone (chance 10%)
        lines += ["", "Zero-shot top-1, test %: " + ", ".join(shots) + "."]
    first = next(iter(rows.values()))[0]["eval"]
    if "attributes" in first:
        lines += ["", *attribute_table(rows)]
    lines += ["", f"kNN: k={first['knn_k']}, T={first['knn_temperature']}, cosine; linear probe: multinomial logistic "
              "regression with L2 chosen on a held-out fifth of train. Minutes: wall clock of training and "
              f"evaluation on {on or machine()}; read them as rough.", "",
              f"Produced by `{command}`."]
    return "\n".join(lines) + "\n"


def attribute_table(rows: dict) -> list[str]:
    """What the features kept: the linear probe / kNN of the digit and of each nuisance attribute."""
    first = next(iter(rows.values()))[0]["eval"]["attributes"]
    names = [n for n in first if first[n]["majority"] < 1.0]
    constant = [n for n in first if n not in names]
    lines = ["What the features kept (linear probe / kNN, test %; *majority*: the most frequent class's share "
             "of the test split): " + ", ".join(f"{n} ({first[n]['classes']} classes, majority "
                                                f"{100 * first[n]['majority']:.1f}%)" for n in names) + "."
             + (f" Left out, one class on every test image: {', '.join(constant)}." if constant else ""), "",
             "| features | digit | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    def cell(results: list[dict]) -> str:
        return f"{stat([r['linear_probe'] for r in results])} / {stat([r['knn'] for r in results])}"

    for label, runs in rows.items():
        for rep in ("learned", "random_init"):
            cells = [cell([r["eval"][rep] for r in runs])]
            cells += [cell([r["eval"]["attributes"][n][rep] for r in runs]) for n in names]
            lines.append(f"| {label}: {'learned' if rep == 'learned' else 'random init'} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default="runs/photo_digits_table")
    parser.add_argument("--out", default="photo_digits_table", help="results file name (without suffix)")
    parser.add_argument("--recipe", default=None, help="the configs' argument: the data recipe (`large`)")
    parser.add_argument("--attributes", nargs="*", default=None, metavar="NAME",
                        help="also probe the features for these attributes (none named: colour, place and photo)")
    parser.add_argument("--readme", nargs="*", default=None, metavar="NAME",
                        help="train nothing: write the README's table from these saved results (file names "
                             "without suffix, in experiments/results; none named: README_RESULTS)")
    args, rest = parser.parse_known_args(argv)
    if args.readme is not None:
        table = readme_table(args.readme or README_RESULTS)
        update_readme_block("photo-digits-table", table)
        print(table)
        return
    overrides = config_lib.parse_overrides(rest)

    def spec(label):
        return CONFIGS[label][0] + (f":{args.recipe}" if args.recipe else "")

    rows, raw = {}, []
    for label in args.configs:
        rows[label] = []
        for seed in args.seeds:
            config = config_lib.load_config(spec(label), overrides)
            config.seed, config.progress = seed, False
            config.evals.probes.representations = ("learned", "random_init")
            if args.attributes is not None:
                config.evals.attributes = {"names": tuple(args.attributes)}
            workdir = pathlib.Path(args.workdir) / label / f"seed{seed}"
            resumed = (workdir / "eval.json").exists()
            start = time.perf_counter()
            result = train_and_evaluate(config, workdir)
            minutes = run_minutes(workdir, (time.perf_counter() - start) / 60, resumed)
            rate = steps_per_second(workdir, config.batch_size)
            print(f"{label} seed {seed}: {'-' if minutes is None else f'{minutes:.1f}'} min, "
                  f"linear probe {100 * result['learned']['linear_probe']:.2f}% "
                  f"(random init {100 * result['random_init']['linear_probe']:.2f}%), kNN "
                  f"{100 * result['learned']['knn']:.2f}%", flush=True)
            rows[label].append({"seed": seed, "eval": result, "minutes": minutes, "steps_per_s": rate,
                                "resumed": resumed})
    images = config.data.name.removesuffix("_captions").removesuffix("_digit")  # the images' dataset
    for seed in args.seeds:  # the same images for every config of one recipe
        cached = pathlib.Path(args.workdir) / "raw_pixels" / f"{images}_seed{seed}.json"
        if cached.exists():
            raw.append(json.loads(cached.read_text()))
        else:
            raw.append(raw_pixel_probes(config, seed))  # the last config's data: the same images for all
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(raw[-1]))
        print(f"raw pixels seed {seed}: linear probe {100 * raw[-1]['linear_probe']:.2f}%, "
              f"kNN {100 * raw[-1]['knn']:.2f}%", flush=True)

    command = " ".join(["python experiments/photo_digits_table.py", *(argv if argv is not None else sys.argv[1:])])
    table = summarise(rows, raw, args.seeds, command.strip(), images)
    out = RESULTS / f"{args.out}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# Photo digits: learned vs random init vs raw pixels\n\n{table}")
    out.with_suffix(".json").write_text(json.dumps({"dataset": images, "command": command.strip(), "runs": rows,
                                                    "raw_pixels": raw, "seeds": args.seeds}, indent=2))
    print(table)


if __name__ == "__main__":
    main()
