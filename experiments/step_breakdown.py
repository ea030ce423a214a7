"""Where a train step's time goes: input, augmentation, encoder, loss, optimizer, measured apart and whole.

    python experiments/step_breakdown.py               # digits default, CIFAR-10 ResNet-18, ImageNet ResNet-50
    python experiments/step_breakdown.py --quick       # the digits case alone, 3 rounds
    python experiments/step_breakdown.py --cases cifar_resnet18 --cifar_batch 64

For each case the runner's own pieces are built from a config (`runner._build_views`: data source, model,
state, optimizer, the jitted train step), and six programs are timed on the same batch shapes:

* input: the host pipeline producing one global batch (`GlobalBatches.local_batch` with the config's
  `data.num_workers` threads, then put on the devices), synchronously. In training `data.prefetch`
  batches are read by threads while the step runs, so the loop waits only for what exceeds the step.
* augmentation: `augment_views` of the step's batch, jitted alone.
* encoder + head forward and backward: the gradient, with respect to the parameters, of <z, c> for the
  projections z of the flattened views and a fixed random cotangent c (BatchNorm in train mode), jitted
  alone.
* loss forward and backward: the method's loss and its gradient on random projections of the step's
  shape [B, V, D], under `shard_map` as in the step, jitted alone.
* optimizer: `tx.update` and `optax.apply_updates` on gradients of the parameters' shapes, jitted alone.
* train step: the runner's jitted step (augmentation, forward, loss, backward, update), whole.

Every program is compiled first, then the six are run in turns (one call of each per round, so that drift
of the shared machine hits all alike) and each is reported as the median over the rounds. A part's share
is its median over the train step's median; `other` is what the five parts of the step leave unexplained
(negative when XLA fuses the whole step better than the parts apart).

The digits case reads the real digits; the CIFAR-10 and ImageNet cases read synthetic uint8 images of the
stored shape through the same pipeline: CIFAR-10's 32x32x3 in memory (its config's `data.in_memory`),
ImageNet's 375x500x3 fitted to 224x224 on the host every batch (`in_memory=False`; no JPEG decode, whose
rate is in `experiments/results/input_pipeline.md`).

Writes `experiments/results/step_breakdown.md` (and .json; `--quick`: `step_breakdown_quick`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from contrastive.data import datasets, pipeline  # noqa: E402
from contrastive.data.augment import augment_views  # noqa: E402
from contrastive.methods import Context, flatten_views  # noqa: E402
from contrastive.methods.contrastive import ContrastiveMethod  # noqa: E402
from contrastive.train import config as config_lib  # noqa: E402
from contrastive.train import runner  # noqa: E402
from contrastive.train.step import images_to_float, state_shardings  # noqa: E402

PARTS = ("input", "augmentation", "encoder", "loss", "optimizer")  # timed alone
IN_STEP = PARTS[1:]  # the parts that run inside the jitted step
LABELS = {"input": "input (host batch)", "augmentation": "augmentation", "encoder": "encoder + head fwd+bwd",
          "loss": "loss fwd+bwd", "optimizer": "optimizer update", "step": "train step (whole)"}


class SyntheticImages:
    """A random-access source of `n` {image uint8 [H, W, C], label} examples of one stored shape."""

    def __init__(self, n: int, shape: tuple[int, int, int], seed: int = 0):
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        self.labels = rng.integers(0, 10, n)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[int(i)], "label": self.labels[int(i)]}


def register_synthetic(name: str, n: int, shape: tuple[int, int, int]) -> str:
    """Register dataset `name`: `n` synthetic uint8 images of `shape` (every split the same), 8-bit pixels."""
    source = SyntheticImages(n, shape)
    datasets.register_dataset(datasets.DatasetSpec(name, lambda split, data_dir: source))
    return name


def case_config(config_file: str, **overrides):
    """The config of `config_file` with `overrides` (dotted keys); no checkpoint, eval or progress bar."""
    c = config_lib.load_config(config_file)
    c.progress, c.eval.at_end, c.compilation_cache_dir = False, False, ""
    config_lib.set_values(c, overrides)
    return c


def _timed(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def breakdown(config, *, rounds: int = 5) -> dict:
    """Median seconds of each part and of the whole train step of `config` (a contrastive view-based
    method: SimCLR, DCL, SupCon), and each as a share of the step; see the module docstring."""
    setup = runner.check_config(config)
    if not isinstance(setup.method, ContrastiveMethod):
        raise ValueError(f"step_breakdown times the contrastive view-based methods (a model, then the loss on its "
                         f"projections), not loss.name={config.loss.name!r}")
    with tempfile.TemporaryDirectory() as tmp:
        built = runner._build_views(config, setup, pathlib.Path(tmp) / "unused")
    mesh, method, tx = setup.mesh, setup.method, setup.tx
    batches = pipeline.GlobalBatches(built.train_source, global_batch_size=config.batch_size, seed=config.seed,
                                     mesh=mesh, keys=built.keys, prefetch=config.data.prefetch,
                                     num_workers=pipeline.worker_count(config.data.num_workers))
    state = jax.device_put(built.state, state_shardings(built.state, mesh))
    fixed = jax.tree.map(lambda x: jnp.array(x, copy=True), state)  # for the parts: the step donates `state`
    graphdef, pixel_max, augment = built.graphdef, pipeline.max_pixel_value(config.data.name), setup.augment
    rows = NamedSharding(mesh, P("data"))
    batch = batches.to_global(batches.local_batch(0))
    batch_size = config.batch_size

    @jax.jit
    def augmentation(images, key):
        return augment_views(key, images_to_float(images, pixel_max), jnp.arange(batch_size), augment)

    key = jax.random.PRNGKey(1)
    views = augmentation(batch["image"], key)
    shape = (batch_size, augment.num_views, config.model.projection_dim)
    cotangent = jax.device_put(jax.random.normal(jax.random.PRNGKey(2), (batch_size * augment.num_views, shape[2])),
                               rows)

    @jax.jit
    def encoder(params, model_state, views, cotangent):
        def inner(p):
            model = nnx.merge(graphdef, p, model_state, copy=True)  # train mode: BatchNorm's batch statistics
            return jnp.vdot(model(flatten_views(views)), cotangent)
        return jax.value_and_grad(inner)(params)

    objective = method.objective(Context(config=config, mesh=mesh, loss=setup.objective))
    loss_on_mesh = jax.shard_map(lambda z, labels: objective(z, labels, axis_name="data"), mesh=mesh,
                                 in_specs=(P("data"), P("data")), out_specs=(P(), P()))
    loss = jax.jit(jax.value_and_grad(lambda z, labels: loss_on_mesh(z, labels)[0]))
    z = jax.device_put(jax.random.normal(jax.random.PRNGKey(3), shape), rows)

    @jax.jit
    def optimizer(grads, opt_state, params):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), fixed.params)
    holder = {"state": state, "step": 0}

    def train_step():
        holder["state"], metrics = built.train_step(holder["state"], batch)  # donates the previous state
        return metrics["loss"]

    def read_input():
        holder["step"] += 1
        return batches.to_global(batches.local_batch(holder["step"]))

    programs = {"input": read_input, "augmentation": lambda: augmentation(batch["image"], key),
                "encoder": lambda: encoder(fixed.params, fixed.model_state, views, cotangent),
                "loss": lambda: loss(z, batch["label"]),
                "optimizer": lambda: optimizer(grads, fixed.opt_state, fixed.params), "step": train_step}
    compile_s = {name: _timed(fn) for name, fn in programs.items()}  # the first call compiles
    times = {name: [] for name in programs}
    for _ in range(rounds):
        for name, fn in programs.items():
            times[name].append(_timed(fn))
    median = {name: statistics.median(t) for name, t in times.items()}
    step = median["step"]
    shares = {name: median[name] / step for name in PARTS}
    shares["other"] = 1.0 - sum(shares[name] for name in IN_STEP)
    return {"median_s": median, "times_s": times, "first_call_s": compile_s, "shares_of_step": shares,
            "rounds": rounds, "batch_size": batch_size, "views": augment.num_views,
            "image_shape": list(np.asarray(batch["image"]).shape[1:]), "encoder": config.model.encoder,
            "dtype": config.model.dtype, "devices": int(mesh.devices.size), "loss": config.loss.name,
            "projection_dim": config.model.projection_dim, "in_memory": bool(config.data.in_memory),
            "num_workers": pipeline.worker_count(config.data.num_workers)}


def cases(args) -> dict:
    """name -> (description, config) of the cases to run."""
    out = {}
    if "digits" in args.cases:
        out["digits"] = ("default config (configs/simclr_digits.py)", case_config("configs/simclr_digits.py"))
    if "cifar_resnet18" in args.cases:
        name = register_synthetic("synthetic_cifar10", max(2048, args.cifar_batch), (32, 32, 3))
        out["cifar_resnet18"] = (
            f"configs/simclr_cifar10_resnet18.py, synthetic 32x32x3 in memory, batch {args.cifar_batch}",
            case_config("configs/simclr_cifar10_resnet18.py", **{"data.name": name, "batch_size": args.cifar_batch}))
    if "imagenet_resnet50" in args.cases:
        name = register_synthetic("synthetic_imagenet", max(64, 4 * args.imagenet_batch), (375, 500, 3))
        out["imagenet_resnet50"] = (
            f"configs/simclr_imagenet_resnet50.py, synthetic 375x500x3 fitted to 224x224 per batch, "
            f"batch {args.imagenet_batch}",
            case_config("configs/simclr_imagenet_resnet50.py", **{"data.name": name,
                                                                   "batch_size": args.imagenet_batch}))
    return out


def markdown(results: dict, meta: dict, command: str) -> str:
    names = list(results)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    describe = lambda r: (f"{r['encoder']} ({r['dtype']}), {r['image_shape'][0]}x{r['image_shape'][1]}x"
                          f"{r['image_shape'][2]}, batch {r['batch_size']} x {r['views']} views, {r['devices']} "
                          f"device(s)")
    lines.append("| case | " + " | ".join(describe(results[n]) for n in names) + " |")
    for part in (*PARTS, "step"):
        cells = []
        for n in names:
            r = results[n]
            seconds = r["median_s"][part]
            share = "" if part == "step" else f" ({100 * r['shares_of_step'][part]:.1f}%)"
            cells.append(f"{_fmt_s(seconds)}{share}")
        lines.append(f"| {LABELS[part]} | " + " | ".join(cells) + " |")
    lines.append("| other (step - the four in-step parts) | "
                 + " | ".join(f"{100 * results[n]['shares_of_step']['other']:.1f}%" for n in names) + " |")
    lines += ["", "Median of " + ", ".join(f"{results[n]['rounds']}" for n in names) + " rounds (per case) after "
              "compilation, the six programs called in turns in one process; percentages are of the train step's "
              "median. Input: one batch produced synchronously on the host (with prefetch it overlaps the step). "
              "Cases: " + "; ".join(f"`{n}`: {meta['descriptions'][n]}" for n in names) + ".", "",
              f"Machine: {meta['machine']}; load average {meta['load_before']} before and {meta['load_after']} "
              "after (1, 5, 15 min), the cores shared with other jobs.", "", f"Produced by `{command}`.", ""]
    return "\n".join(lines)


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{1e3 * seconds:.1f} ms" if seconds >= 1e-3 \
        else f"{1e6 * seconds:.0f} us"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the digits case alone, 3 rounds")
    parser.add_argument("--cases", nargs="+", default=["digits", "cifar_resnet18", "imagenet_resnet50"],
                        choices=["digits", "cifar_resnet18", "imagenet_resnet50"])
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per case (default 5; --quick 3)")
    parser.add_argument("--cifar_batch", type=int, default=256, help="the ResNet-18 case's batch (config: 256)")
    parser.add_argument("--imagenet_batch", type=int, default=8, help="the ResNet-50 case's batch (config: 4,096)")
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "step_breakdown"))
    args = parser.parse_args(argv)
    if args.quick:
        args.cases = ["digits"]
    rounds = args.rounds or (3 if args.quick else 5)
    command = ("python experiments/step_breakdown.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    load_before = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    results, descriptions = {}, {}
    for name, (description, config) in cases(args).items():
        print(f"{name}: {description}", flush=True)
        results[name] = breakdown(config, rounds=rounds)
        descriptions[name] = description
        r = results[name]
        print("  " + ", ".join(f"{p} {_fmt_s(r['median_s'][p])}" for p in (*PARTS, "step")), flush=True)
    meta = {"machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), jax "
                       f"{jax.__version__} on {jax.devices()[0].platform}",
            "load_before": load_before, "load_after": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
            "descriptions": descriptions}
    text = markdown(results, meta, command)
    print(text)
    out = pathlib.Path(args.out + ("_quick" if args.quick else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"results": results, "meta": meta, "command": command}, indent=2))


if __name__ == "__main__":
    main()
