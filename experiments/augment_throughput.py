"""Throughput of the on-device augmentation: 2 views of a batch, jitted, after warm-up.

    python experiments/augment_throughput.py            # 256 x 32x32x3 and 64 x 224x224x3, simclr and byol
    python experiments/augment_throughput.py --quick    # fewer repeats, smaller batches

For each (recipe, batch) it compiles `augment_views` once, runs it `--warmup` times, then times `--repeats`
calls (each waits for its result) and prints the median ms per call and images/s (input images per second;
each makes `num_views` views). Prints the jax version and the device, and writes the table to
`experiments/results/augment_throughput.md`.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from contrastive.data.augment import AugmentConfig, augment_views  # noqa: E402


def measure(recipe: str, batch: int, side: int, num_views: int, warmup: int, repeats: int) -> dict:
    cfg = AugmentConfig(recipe=recipe, num_views=num_views)
    images = jax.random.uniform(jax.random.key(0), (batch, side, side, 3))
    ids = jnp.arange(batch)
    f = jax.jit(lambda key, x: augment_views(key, x, ids, cfg))
    start = time.perf_counter()
    f(jax.random.key(0), images).block_until_ready()
    compile_s = time.perf_counter() - start
    for i in range(warmup):
        f(jax.random.key(1 + i), images).block_until_ready()
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        f(jax.random.key(100 + i), images).block_until_ready()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"recipe": recipe, "batch": batch, "side": side, "ms": 1e3 * median, "images_s": batch / median,
            "spread": (1e3 * min(times), 1e3 * max(times)), "compile_s": compile_s}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batches of 64 / 8 and 3 repeats")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--num_views", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "augment_throughput.md"))
    args = parser.parse_args(argv)
    shapes = [(64, 32), (8, 224)] if args.quick else [(256, 32), (64, 224)]
    repeats = 3 if args.quick else args.repeats
    device = jax.devices()[0]
    header = (f"jax {jax.__version__}, device {device.platform}: {device.device_kind} "
              f"({jax.device_count()} devices, 1 used), {args.num_views} views, median of {repeats} calls "
              f"after {args.warmup} warm-up calls")
    print(header, flush=True)
    lines = ["| recipe | batch | image | ms per call (median) | min..max ms | images/s | compile s |",
             "|---|---|---|---|---|---|---|"]
    for recipe in ("simclr", "byol"):
        for batch, side in shapes:
            r = measure(recipe, batch, side, args.num_views, args.warmup, repeats)
            line = (f"| {recipe} | {batch} | {side}x{side}x3 | {r['ms']:.1f} | "
                    f"{r['spread'][0]:.1f}..{r['spread'][1]:.1f} | {r['images_s']:.0f} | {r['compile_s']:.1f} |")
            lines.append(line)
            print(line, flush=True)
    command = "python experiments/augment_throughput.py" + (" --quick" if args.quick else "")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"{header}\n\n" + "\n".join(lines) + f"\n\nProduced by `{command}`.\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
