"""Per-device memory of the train state, replicated vs fsdp (`config.sharding`), for one config's model.

    python experiments/fsdp_memory.py                 # SimCLR ImageNet ResNet-50, 8 virtual CPU devices
    python experiments/fsdp_memory.py --compile       # also the compiled step's memory_analysis (minutes on CPU)

The state (parameters, BatchNorm statistics, the config's optimizer state: LARS momentum for this config)
is built as the runner builds it and placed with `state_shardings(state, mesh, layout)`; the bytes per
device are the sizes of the shards held on device 0, summed (`contrastive.parallel.sharding.bytes_per_device`),
so they are what the layout really allocates, not a formula. With `--compile`, the runner's jitted train
step is compiled (not run) for both layouts at a small batch (`--batch`, default 8: one image per device;
the config's 4,096 does not matter for the state) on synthetic 224x224x3 images, and XLA's
`memory_analysis()` of the compiled program is reported per device: its arguments (the state and the batch),
outputs, and temporaries (activations, gathered parameters, gradients).

Writes `experiments/results/fsdp_memory.md` (the table printed).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import jax  # noqa: E402
from step_breakdown import register_synthetic  # noqa: E402

import contrastive  # noqa: E402,F401 - the package's XLA workaround flags
from contrastive.models.encoders import build_model  # noqa: E402
from contrastive.parallel.sharding import FSDP_MIN_SIZE, LAYOUTS, bytes_per_device  # noqa: E402
from contrastive.train import config as config_lib  # noqa: E402
from contrastive.train import runner  # noqa: E402
from contrastive.train.step import init_state, state_shardings  # noqa: E402

MIB = 2**20


def state_bytes(config, layout: str, image_shape: tuple[int, int, int]) -> dict:
    """Bytes on device 0 of each part of `config`'s step-0 state in `layout` (its model built for images of
    `image_shape`), and its array counts."""
    setup = runner.check_config(config)
    model = build_model(config.model, image_shape, seed=config.seed)
    _, state = init_state(model, setup.tx, config.seed)
    placed = jax.device_put(state, state_shardings(state, setup.mesh, layout))
    leaves = jax.tree.leaves(placed.params)
    return {"params": bytes_per_device(placed.params), "opt_state": bytes_per_device(placed.opt_state),
            "model_state": bytes_per_device(placed.model_state), "total": bytes_per_device(placed),
            "split": sum(not x.sharding.is_fully_replicated for x in leaves), "arrays": len(leaves),
            "num_params": sum(x.size for x in leaves)}


def compiled_memory(config, layout: str) -> dict:
    """memory_analysis() of the runner's train step for `config` in `layout`, compiled, not run."""
    config = config_lib.set_values(config.copy_and_resolve_references(), {"sharding": layout})
    setup = runner.check_config(config)
    with tempfile.TemporaryDirectory() as tmp:
        built = runner._build_views(config, setup, pathlib.Path(tmp) / "unused")
    state = jax.device_put(built.state, state_shardings(built.state, setup.mesh, layout))
    from contrastive.data import pipeline

    batches = pipeline.GlobalBatches(built.train_source, global_batch_size=config.batch_size, seed=0, mesh=setup.mesh,
                                     keys=built.keys, num_workers=1)
    analysis = built.train_step.lower(state, batches.to_global(batches.local_batch(0))).compile().memory_analysis()
    return {"arguments": analysis.argument_size_in_bytes, "outputs": analysis.output_size_in_bytes,
            "temporaries": analysis.temp_size_in_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/simclr_imagenet_resnet50.py")
    parser.add_argument("--compile", action="store_true", help="also the compiled step's memory_analysis")
    parser.add_argument("--batch", type=int, default=8, help="global batch of the compiled step (--compile)")
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "fsdp_memory.md"))
    args = parser.parse_args()

    config = config_lib.load_config(str(ROOT / args.config))
    config.progress, config.eval.at_end, config.compilation_cache_dir = False, False, ""
    devices = len(jax.devices())
    image_shape = (*config.data.image_size, 3)
    rows = {layout: state_bytes(config, layout, image_shape) for layout in LAYOUTS}
    n = rows["replicated"]
    lines = [f"**{args.config}** ({config.model.encoder}, {n['num_params']:,} parameters in {n['arrays']} arrays, "
             f"optimizer {config.optimizer.name}), {devices} devices on one `data` axis; MiB on device 0.", "",
             "| sharding | arrays split | parameters | optimizer state | BatchNorm statistics | whole state |",
             "|---|---|---|---|---|---|"]
    for layout, r in rows.items():
        lines.append(f"| {layout} | {r['split']} / {r['arrays']} | {r['params'] / MIB:.1f} | "
                     f"{r['opt_state'] / MIB:.1f} | {r['model_state'] / MIB:.2f} | {r['total'] / MIB:.1f} |")
    ratio = rows["fsdp"]["total"] / n["total"]
    lines += ["", f"fsdp holds {ratio:.3f} of the replicated state per device (1/{devices} = {1 / devices:.3f} "
              f"would split everything; arrays under {FSDP_MIN_SIZE:,} elements and those without a dimension "
              f"{devices} divides stay whole)."]
    if args.compile:
        synthetic = register_synthetic("synthetic_imagenet_224", max(64, 2 * args.batch), (224, 224, 3))
        small = config_lib.set_values(config.copy_and_resolve_references(),
                                      {"data.name": synthetic, "batch_size": args.batch, "data.num_workers": 1})
        compiled = {layout: compiled_memory(small, layout) for layout in LAYOUTS}
        lines += ["", f"The compiled train step at batch {args.batch} (`memory_analysis()`, per device, MiB):", "",
                  "| sharding | arguments | outputs | temporaries | arguments + temporaries |", "|---|---|---|---|---|"]
        for layout, m in compiled.items():
            lines.append(f"| {layout} | {m['arguments'] / MIB:.1f} | {m['outputs'] / MIB:.1f} | "
                         f"{m['temporaries'] / MIB:.1f} | {(m['arguments'] + m['temporaries']) / MIB:.1f} |")
        lines += ["", "The outputs reuse the donated state's buffers. The temporaries hold, in both layouts, the "
                  "activations and a whole gradient (on CPU XLA all-reduces it and each device keeps its slice), "
                  "and under fsdp also the gathered parameters: what fsdp saves is the resident state."]
    command = "python experiments/fsdp_memory.py" + (" --compile" if args.compile else "") + \
        (f" --config {args.config}" if args.config != parser.get_default("config") else "")
    lines += ["", f"Produced by `{command}` (jax {jax.__version__}, {jax.devices()[0].platform})."]
    text = "\n".join(lines) + "\n"
    print(text)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
