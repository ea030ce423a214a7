"""Train the image-text configs (CLIP, SigLIP, InfoLOOB) on the captioned digits and tabulate their numbers.

    python experiments/image_text_digits.py                  # all three configs, seed 0
    python experiments/image_text_digits.py --losses clip --config.num_steps=100

Each config trains in `<workdir>/<config>` (a finished run is resumed, not retrained; delete the workdir to
time it again). Writes `experiments/results/image_text_digits.md` (and .json) and, for the configs as they
are, the table in README.md between the `imagetext-results:begin/end` markers.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contrastive.train import config as config_lib  # noqa: E402
from contrastive.train.runner import train_and_evaluate  # noqa: E402
from experiments.readme_block import update_readme_block  # noqa: E402

LOSSES = ("clip", "siglip", "infoloob")


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def table(results: dict, command: str) -> str:
    lines = ["| config | steps | time (s) | zero-shot top-1 | I->T R@1 / R@5 / R@10 | T->I R@1 / R@5 / R@10 | "
             "T->I class R@1 | image tower linear probe / kNN |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        ret = r["retrieval"]
        i2t, t2i = (" / ".join(pct(ret[f"{d}/recall@{k}"]) for k in (1, 5, 10))
                    for d in ("image_to_text", "text_to_image"))
        lines.append(f"| {name} | {r['step']} | {r['seconds']:.0f} | {pct(r['zero_shot'])} | {i2t} | {t2i} | "
                     f"{pct(ret['text_to_image_class/recall@1'])} | "
                     f"{pct(r['learned']['linear_probe'])} / {pct(r['learned']['knn'])} |")
    any_r = next(iter(results.values()))
    chance = {"zero-shot": 1 / 10, "T->I R@1": 1 / any_r["num_test"]}
    return ("\n".join(lines) + "\n\n"
            f"Test split: {any_r['num_test']} images, {any_r['num_test_captions']} captions "
            f"({any_r['num_test_captions'] // any_r['num_test']} per image); accuracies and recalls in %. "
            f"Chance: zero-shot {pct(chance['zero-shot'])}, T->I R@1 {pct(chance['T->I R@1'])}. "
            "The captions name only the digit, so a caption fits ~45 test images equally well: T->I R@1 of "
            f"the one paired image is capped near 1/45 = {pct(1 / 44.5)}; 'T->I class' counts any image of the "
            "named digit as a hit. Time: wall-clock seconds of the whole run (data, compilation, training, "
            "evaluation) on the machine that ran the script, 2 shared CPU cores here.\n\n"
            f"Produced by `{command}`.\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--workdir", default="runs/image_text")
    parser.add_argument("--no-readme", action="store_true", help="do not update README.md")
    args, rest = parser.parse_known_args(argv)
    overrides = config_lib.parse_overrides(rest)

    results = {}
    for loss in args.losses:
        name = f"{loss}_digits"
        config = config_lib.load_config(str(ROOT / "configs" / f"{name}.py"), overrides)
        config.progress = False
        start = time.perf_counter()
        result = train_and_evaluate(config, pathlib.Path(args.workdir) / name)
        result["seconds"] = time.perf_counter() - start
        print(f"{name}: {result['seconds']:.0f} s", flush=True)
        results[name] = result

    command = " ".join(["python experiments/image_text_digits.py", *(argv if argv is not None else sys.argv[1:])])
    text = table(results, command.strip())
    out = ROOT / "experiments" / "results" / "image_text_digits.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# Image-text configs on the captioned digits\n\n{text}")
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    print(text)
    if not args.no_readme and not overrides and tuple(args.losses) == LOSSES:
        update_readme_block("imagetext-results", text)


if __name__ == "__main__":
    main()
