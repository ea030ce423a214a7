"""Input pipeline speed: the host reader alone, and the share of step time a training run waits for input.

    python experiments/input_pipeline.py            # workers 1 2 4 8 on 512 JPEGs; digits and CIFAR-size runs
    python experiments/input_pipeline.py --quick    # 128 JPEGs, workers 1 2, 8-step runs

Part 1, the host pipeline alone: synthetic JPEGs of ImageNet-like sizes (sides 300..500, PIL quality 90, in
a temporary folder) are read and decoded by TFDS's own image decoder (`tfds.features.Image`, as
`tfds.data_source` decodes a record), fitted to 224 x 224 (`pipeline.resize_image`: shorter side, centre
crop) and batched by `GlobalBatches` with 1, 2, 4, ... worker threads: images/s in total and per worker.

Part 2, training: the time the train loop spends blocked in `next(data)` (measured around the runner's own
iterator) as a share of the loop's wall time, excluding the first step (compilation), with `log_every=1`
(the loss of every step is fetched, so the loop cannot run ahead of the device), in the default
digits run (in memory) and in a CIFAR-size run (32 x 32 x 3 PNGs, as TFDS stores CIFAR-10, decoded by the
workers every step: `data.in_memory=False`; batch 256; the cnn encoder or a ResNet-18 of width 0.25).

Writes `experiments/results/input_pipeline.md` (and .json). The numbers are wall-clock on the machine
that runs it; on a shared machine they move with the other load (the load average is printed with them).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from contrastive.data import datasets, pipeline  # noqa: E402
from contrastive.parallel.mesh import make_mesh  # noqa: E402
from contrastive.train import config as config_lib  # noqa: E402


class EncodedImages:
    """A random-access source of {image, label} decoding encoded image files on every read, as
    `tfds.data_source` decodes its records (TFDS's `Image` feature: OpenCV if installed, else PIL)."""

    def __init__(self, paths, labels):
        import tensorflow_datasets as tfds

        self.paths, self.labels = list(paths), np.asarray(labels)
        self.feature = tfds.features.Image(shape=(None, None, 3))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.feature.decode_example_np(pathlib.Path(self.paths[i]).read_bytes()),
                "label": self.labels[i]}


def write_images(folder: pathlib.Path, n: int, sides: tuple[int, int], fmt: str, seed: int = 0) -> list[str]:
    """n images of smooth random colour plus noise (so that they compress like photos), each side drawn
    from `sides` (inclusive), written as `fmt` files."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = (int(s) for s in rng.integers(sides[0], sides[1] + 1, size=2))
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        pixels = np.clip(np.asarray(coarse, np.int16) + rng.integers(-12, 13, (h, w, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        path = folder / f"{i:05d}.{fmt.lower()}"
        path.write_bytes(buffer.getvalue())
        paths.append(str(path))
    return paths


def host_throughput(what: str, paths, workers_list, batch_size: int, image_size=None, in_memory=False) -> list[dict]:
    """images/s of GlobalBatches over image files (decode, fit to `image_size`, batch, put on the device);
    `in_memory`: decoded once into memory first, a batch is a gather of rows."""
    spec = datasets.DatasetSpec("synthetic_jpeg", lambda split, data_dir: None)
    source = pipeline.ImageExamples(EncodedImages(paths, np.zeros(len(paths), np.int64)), spec, "train", image_size)
    if in_memory:
        source = pipeline.InMemorySource(pipeline.read_all(source, ("image", "label"), num_workers=max(workers_list)))
        workers_list = [1]  # a gather needs no workers
    mesh = make_mesh(1)
    steps = max(4, len(paths) // batch_size)
    rows = []
    for workers in workers_list:
        batches = pipeline.GlobalBatches(source, global_batch_size=batch_size, seed=0, mesh=mesh, num_workers=workers,
                                         prefetch=2, keys=("image", "label"))
        it = batches.iterate(0)
        next(it)["image"].block_until_ready()  # threads started, the first batches under way
        start = time.perf_counter()
        for _ in range(steps):
            next(it)["image"].block_until_ready()
        seconds = time.perf_counter() - start
        it.close()
        rate = steps * batch_size / seconds
        rows.append({"images_of": what, "workers": workers, "images": steps * batch_size, "seconds": seconds,
                     "images_per_s": rate, "images_per_s_per_worker": rate / workers})
        print(f"host pipeline, {what}, {workers} worker(s): {rate:,.0f} images/s ({rate / workers:,.0f} per worker)",
              flush=True)
    return rows


class WaitMeter:
    """Wraps `GlobalBatches.iterate` to time each `next(data)` of the train loop."""

    def __init__(self):
        self.calls: list[tuple[float, float]] = []
        self._original = pipeline.GlobalBatches.iterate

    def __enter__(self):
        meter, original = self, self._original

        def timed(batches, start_step):
            inner = original(batches, start_step)
            while True:
                t0 = time.perf_counter()
                batch = next(inner)
                meter.calls.append((t0, time.perf_counter()))
                yield batch

        pipeline.GlobalBatches.iterate = timed
        return self

    def __exit__(self, *exc):
        pipeline.GlobalBatches.iterate = self._original

    def summary(self) -> dict:
        """Over steps 1 .. n-2 (step 0 compiles): the loop's wall time, the time blocked in next(data)."""
        calls = self.calls[1:]
        wall = calls[-1][0] - calls[0][0]
        waited = sum(t1 - t0 for t0, t1 in calls[:-1])
        n = len(calls) - 1
        return {"steps_timed": n, "step_ms": 1e3 * wall / n, "wait_ms_per_step": 1e3 * waited / n,
                "wait_share": waited / wall}


def training_wait(name: str, config, workdir: pathlib.Path) -> dict:
    from contrastive.train.runner import train_and_evaluate

    with WaitMeter() as meter:
        train_and_evaluate(config, workdir)
    row = {"run": name, "batch_size": config.batch_size, "encoder": config.model.encoder,
           "in_memory": config.data.in_memory, "num_workers": pipeline.worker_count(config.data.num_workers),
           **meter.summary()}
    row["images_per_s"] = config.batch_size / (row["step_ms"] / 1e3)
    print(f"{name}: step {row['step_ms']:.0f} ms, in next(data) {row['wait_ms_per_step']:.1f} ms "
          f"({100 * row['wait_share']:.1f}%)", flush=True)
    return row


def run_config(base: str, num_steps: int, overrides: dict):
    c = config_lib.load_config(base)
    c.num_steps, c.progress, c.eval.at_end = num_steps, False, False
    # The loss is fetched after every step, so that each step's time is its compute (no dispatch running ahead)
    # and the input has exactly one step's time to be ready: an upper bound on the wait of log_every=10.
    c.log_every = 1
    c.optimizer.warmup_steps = 2
    c.checkpoint.every_steps = 10 * num_steps  # the final save only
    config_lib.set_values(c, overrides)
    return c


def markdown(host: list[dict], runs: list[dict], meta: dict, command: str) -> str:
    lines = [f"Host pipeline alone: {meta['num_jpegs']} JPEGs (sides {meta['sides'][0]}..{meta['sides'][1]}, quality "
             f"90) decoded by TFDS's image decoder ({meta['decoder']}) and fitted to 224 x 224 (shorter side, centre "
             f"crop), and {meta['num_pngs']} 32 x 32 PNGs decoded only; batched {meta['batch_size']} at a time and put "
             "on the device.", "",
             "| images | workers | images/s | images/s per worker |", "|---|---|---|---|"]
    lines += [f"| {r['images_of']} | {r['workers']} | {r['images_per_s']:,.0f} | {r['images_per_s_per_worker']:,.0f} |"
              for r in host]
    lines += ["", "Training: time blocked in `next(data)` as a share of the train loop's wall time (steps after the "
              "first).", "", "| run | encoder | batch | data | workers | step (ms) | waiting (ms/step) | wait share |",
              "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        data = "in memory" if r["in_memory"] else "decoded every step"
        lines.append(f"| {r['run']} | {r['encoder']} | {r['batch_size']} | {data} | {r['num_workers']} | "
                     f"{r['step_ms']:.0f} | {r['wait_ms_per_step']:.1f} | {100 * r['wait_share']:.1f}% |")
    lines += ["", f"Machine: {meta['cpus']} CPU cores, load average {meta['load_before']} before and "
              f"{meta['load_after']} after (1, 5, 15 min); the cores were shared with other jobs, so the absolute "
              "numbers are lower than on an idle machine.", "", f"Produced by `{command}`.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None, help="train steps per run (default 22; --quick 8)")
    parser.add_argument("--resnet", action="store_true", help="also the CIFAR-size run with a ResNet-18 of width 0.25")
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "input_pipeline"))
    args = parser.parse_args(argv)
    workers = args.workers or ([1, 2] if args.quick else [1, 2, 4, 8])
    num_jpegs, num_pngs = (128, 1024) if args.quick else (512, 4096)
    steps = args.steps or (8 if args.quick else 22)
    sides, batch = (300, 500), 32
    command = "python experiments/input_pipeline.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:]))
    load_before = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    try:
        import cv2  # noqa: F401

        decoder = "OpenCV"
    except ImportError:
        decoder = "PIL; OpenCV is not installed"

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "jpeg").mkdir()
        host = host_throughput("JPEG -> 224 x 224", write_images(tmp / "jpeg", num_jpegs, sides, "JPEG"), workers,
                               batch, (224, 224))
        (tmp / "png").mkdir()
        pngs = write_images(tmp / "png", num_pngs, (32, 32), "PNG", seed=1)
        host += host_throughput("PNG 32 x 32", pngs[:8 * batch], workers, batch)
        host += host_throughput("32 x 32 in memory, batch 256", pngs, workers, 256, in_memory=True)
        labels = np.arange(num_pngs) % 10
        datasets.register_dataset(datasets.DatasetSpec(
            "synthetic_cifar_png", lambda split, data_dir: EncodedImages(pngs, labels)))
        runs = [training_wait("digits (default config)", run_config("configs/simclr_digits.py", steps, {}),
                              tmp / "digits")]
        cifar = {"data.name": "synthetic_cifar_png", "batch_size": 256}
        for in_memory in (True, False):
            cifar["data.in_memory"] = in_memory
            runs.append(training_wait("CIFAR-size", run_config("configs/simclr_digits.py", steps, cifar),
                                      tmp / f"cifar_{in_memory}"))
        if args.resnet:
            resnet = {**cifar, "model.encoder": "resnet18", "model.resnet.width": 0.25, "model.dense": ()}
            runs.append(training_wait("CIFAR-size", run_config("configs/simclr_digits.py", steps, resnet),
                                      tmp / "resnet"))

    meta = {"num_jpegs": num_jpegs, "num_pngs": num_pngs, "sides": sides, "batch_size": batch, "decoder": decoder,
            "cpus": os.cpu_count(),
            "load_before": load_before, "load_after": " / ".join(f"{x:.1f}" for x in os.getloadavg())}
    text = markdown(host, runs, meta, command.strip())
    print(text)
    out = pathlib.Path(args.out + ("_quick" if args.quick else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"host": host, "runs": runs, "meta": meta, "command": command},
                                                   indent=2))


if __name__ == "__main__":
    main()
