"""Our CLIP and SigLIP losses against what users would otherwise run: naive JAX and open_clip, in one run.

    python experiments/loss_speed.py              # d = 128 and 512, B = 256 .. 16,384, 1 device
    python experiments/loss_speed.py --devices 8  # the same on 8 virtual devices (shard_map over 'data')
    python experiments/loss_speed.py --quick      # seconds: B = 256, 512 at d = 32 (the test's run)

Forward + backward (``jax.value_and_grad`` w.r.t. both embeddings, float32, unit-norm rows) of

* naive: what a user writes in a few lines of JAX: the full logits ``t X Y^T``, then
  ``optax.softmax_cross_entropy_with_integer_labels`` in both directions (CLIP), or
  ``-sum(log_sigmoid(z * (t X Y^T + b))) / N`` (SigLIP); on several devices the embeddings are
  all-gathered and each device takes its rows' share (open_clip's ``gather_with_grad`` + ``local_loss``);
* dense: ``contrastive.losses.clip`` / ``siglip`` with ``impl='gather'`` (dense b x B logits);
* tiled: the same with ``chunk_size=512`` (one device: the tiled path; several: ``impl='ring'``, tiled);
* open_clip: ``open_clip.loss.ClipLoss`` / ``SigLipLoss`` on torch CPU tensors, when ``import open_clip``
  works (the optional extra ``peer``: ``pip install -e .[peer]``); skipped otherwise.

``impl='auto'`` (the default) is one of dense and tiled; the table says which. Each (loss, d, B) case runs
in its own process; inside it the implementations are compiled, warmed up once, then timed in turns
(``--repeats`` rounds of one call each), so the machine's drift hits all of them alike; the time is the
median of the rounds and the spread their min-max. In the same rounds a plain [1024, 1024] @ [1024, 1024]
float32 matmul is timed, ``PEAK_CALLS`` calls back to back each round (one call straight after a large
program runs at half speed: its caches and threads are cold); the peak is the best of them all, and *of
peak* = (3 x 2 B^2 d useful FLOPs: the similarities and the two input gradients) / time / peak. Peak memory:
the process's peak RSS (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` after ``malloc_trim``
before each implementation's first call, the implementations in increasing order of XLA's buffers, so it is
that call's peak on top of what the process still holds: the runtime, inputs and compiled programs, ~0.3
GiB), and XLA's buffer assignment (temporaries + arguments + outputs per device). An implementation whose
compiled program needs more than ``--budget-gib`` is not run (open_clip: when ~5 B x B float32 buffers
would). Values: every implementation's loss and gradients are compared with naive's (``max_rel_diff``),
where naive ran.

Writes ``experiments/results/loss_speed{,_quick}{,_8dev}.{json,md}``; ``--readme NAME ...`` writes the
README's table from such result files (several runs, e.g. 1 and 8 devices, in one table).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
GIB = 2**30
TILE = 512
SCALE, BIAS = 10.0, -10.0
PEAK_MATMUL = 1024  # the square matmul of the peak: the fastest shape on the 2-core CPU (loss_memory.md)
PEAK_CALLS = 5  # back-to-back calls of it per round
# open_clip's losses hold about this many float32 B x B buffers at their peak (logits both ways and their
# gradients: 5.1 / 6.0 GiB of peak RSS for CLIP / SigLIP at 16,384, ~1 GiB of it the process itself).
OPEN_CLIP_BUFFERS = 5
README_BLOCK = "loss-speed-table"


# ----------------------------------------------------------------------------------------- worker side
def _rss_peak() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _rss_now() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _reset_rss_peak() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``), then restart the peak at the current RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM := VmRSS
    except OSError:
        pass


def naive_loss(loss: str, devices: int):
    """The loss a user writes without this package (see the module docstring)."""
    import jax
    import jax.numpy as jnp
    import optax

    def local(image, text, all_image, all_text, offset):
        labels = offset + jnp.arange(image.shape[0])
        if loss == "clip":
            i2t = optax.softmax_cross_entropy_with_integer_labels(SCALE * image @ all_text.T, labels)
            t2i = optax.softmax_cross_entropy_with_integer_labels(SCALE * text @ all_image.T, labels)
            return 0.5 * (jnp.sum(i2t) + jnp.sum(t2i)) / all_image.shape[0]
        logits = SCALE * image @ all_text.T + BIAS
        z = jnp.where(labels[:, None] == jnp.arange(all_text.shape[0])[None, :], 1.0, -1.0)
        return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / all_image.shape[0]

    if devices == 1:
        if loss == "clip":  # one logits matrix, both directions (as a user would on one device)
            def one(image, text):
                logits = SCALE * image @ text.T
                labels = jnp.arange(image.shape[0])
                return 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                              + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())
            return one
        return lambda image, text: local(image, text, image, text, 0)

    def sharded(image, text):
        gather = lambda x: jax.lax.all_gather(x, "data", axis=0, tiled=True)
        offset = jax.lax.axis_index("data") * image.shape[0]
        return jax.lax.psum(local(image, text, gather(image), gather(text), offset), "data")

    return _shard(sharded, devices)


def _shard(fn, devices: int):
    import jax
    import numpy as np

    mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("data",))
    return jax.shard_map(fn, mesh=mesh, in_specs=jax.P("data"), out_specs=jax.P())


def ours_loss(loss: str, devices: int, **kwargs):
    from contrastive.losses import clip, siglip

    def fn(image, text, axis_name=None):
        if loss == "clip":
            return clip(image, text, logit_scale=SCALE, axis_name=axis_name, **kwargs)[0]
        return siglip(image, text, logit_scale=SCALE, logit_bias=BIAS, axis_name=axis_name, **kwargs)[0]

    if devices == 1:
        return fn
    return _shard(lambda a, c: fn(a, c, axis_name="data"), devices)


def auto_choice(loss: str, batch: int, devices: int, dim: int) -> str:
    """Which of dense / tiled ``impl='auto'`` resolves to for this case (``streamed.auto_impl``; SigLIP's
    tiled path and ring, with the mean reduction benchmarked here, are the fused ones)."""
    from contrastive.losses.streamed import auto_impl

    impl, chunk = auto_impl(batch // devices, devices, sharded=devices > 1, dim=dim, fused=loss == "siglip")
    return "dense" if impl == "gather" and chunk is None else "tiled"


def open_clip_step(loss: str, image, text):
    """A fwd+bwd closure of open_clip's loss on torch CPU copies of the inputs, or None without open_clip."""
    try:
        import numpy as np
        import open_clip.loss as oc
        import torch
    except ImportError:
        return None
    x = torch.from_numpy(np.asarray(image)).requires_grad_(True)
    y = torch.from_numpy(np.asarray(text)).requires_grad_(True)
    scale, bias = torch.tensor(SCALE), torch.tensor(BIAS)
    fn = oc.ClipLoss() if loss == "clip" else oc.SigLipLoss()

    def step():
        x.grad = y.grad = None
        value = fn(x, y, scale) if loss == "clip" else fn(x, y, scale, bias)
        value.backward()
        return float(value), (x.grad.numpy(), y.grad.numpy())

    return step


def worker(cfg: dict) -> dict:
    import jax
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from experiments.loss_memory import _unit_rows, _xla_bytes

    loss, b, d, devices, repeats = cfg["loss"], cfg["batch"], cfg["dim"], cfg["devices"], cfg["repeats"]
    x, y = _unit_rows(jax.random.key(0), b, d), _unit_rows(jax.random.key(1), b, d)
    tile = min(TILE, b // devices)
    tiled = {"chunk_size": tile} | ({"impl": "ring"} if devices > 1 else {"impl": "gather"})
    fns = {"naive": naive_loss(loss, devices), "dense": ours_loss(loss, devices, impl="gather"),
           "tiled": ours_loss(loss, devices, **tiled)}
    results, steps = {}, {}
    for name, fn in fns.items():
        compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(x, y).compile()
        xla = _xla_bytes(compiled)
        results[name] = {"xla_bytes": xla}
        if xla * devices > cfg["budget_gib"] * GIB:
            results[name]["error"] = f"not run: compiled program needs {xla * devices / GIB:.1f} GiB"
        else:
            steps[name] = lambda c=compiled: jax.block_until_ready(c(x, y))
    if devices == 1 and (step := open_clip_step(loss, x, y)) is not None:
        need = OPEN_CLIP_BUFFERS * b * b * 4
        if need > cfg["budget_gib"] * GIB:  # torch has no compiled size to ask; a guess beats an OOM kill
            error = f"not run: needs ~{need / GIB:.0f} GiB ({OPEN_CLIP_BUFFERS} B x B float32)"
            results["open_clip"] = {"error": error}
        else:
            steps["open_clip"], results["open_clip"] = step, {}
    a = np.asarray(_unit_rows(jax.random.key(2), PEAK_MATMUL, PEAK_MATMUL))
    matmul = jax.jit(lambda m: m @ m.T).lower(a).compile()

    def best_matmul() -> float:
        return min(_seconds(lambda: jax.block_until_ready(matmul(a))) for _ in range(PEAK_CALLS))

    steps["matmul"], results["matmul"] = best_matmul, {}
    outputs = {}
    # Warm-up, smallest program first (memory a process keeps after a call hides smaller peaks, not larger).
    for name in sorted(steps, key=lambda n: results[n].get("xla_bytes", 0)):
        step = steps[name]
        _reset_rss_peak()
        before = _rss_now()
        outputs[name] = step()
        results[name] |= {"peak": _rss_peak(), "before": before}
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(step() if name == "matmul" else _seconds(step))
    peak_flops = 2 * PEAK_MATMUL**3 / min(times["matmul"])
    reference = outputs.get("naive")  # None where naive is over the budget (then nothing is compared)
    for name in steps:
        ts = times[name]
        row = results[name] | {"seconds": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "times": ts}
        if name != "matmul":
            value, grads = outputs[name]
            flops = 3 * 2 * b * b * d / row["seconds"]
            row |= {"value": float(value), "flops": flops, "of_peak": flops / peak_flops}
            if reference is not None:
                ref_value, ref_grads = reference
                diffs = [abs(float(value) - float(ref_value)) / abs(float(ref_value))]
                for g, r in zip(grads, ref_grads, strict=True):
                    g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
                    diffs.append(float(np.max(np.abs(g - r)) / max(np.max(np.abs(r)), 1e-30)))
                row["max_rel_diff"] = max(diffs)
        results[name] = row
    return {"peak_flops": peak_flops, "auto": auto_choice(loss, b, devices, d), "impls": results}


# ----------------------------------------------------------------------------------------- driver side
def run_case(cfg: dict, timeout: float) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={cfg['devices']}"
    start = time.time()
    try:
        out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], env=env, capture_output=True,
                             text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        row = cfg | {"error": f"timeout after {timeout:.0f} s"}
    else:
        if out.returncode:
            row = cfg | {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:300]}
        else:
            row = cfg | json.loads(out.stdout.strip().splitlines()[-1])
    print(f"[{time.strftime('%H:%M:%S')}, {time.time() - start:.0f} s] {json.dumps(row)}", flush=True)
    return row


IMPLS = ("naive", "dense", "tiled", "open_clip")


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if "error" in r:
        return r["error"]
    return (f"{_secs(r['seconds'])} ({_secs(r['min_s'])}-{_secs(r['max_s'])}), "
            f"{r['peak'] / GIB:.2f} GiB" + (f" (XLA {r['xla_bytes'] / GIB:.2f})" if "xla_bytes" in r else "")
            + f", {r['of_peak']:.0%}")


def _secs(t: float) -> str:
    return f"{t:.3g} s" if t >= 1 else f"{t * 1e3:.3g} ms"


def report(rows: list[dict], command: str, elapsed: float, load: tuple[float, float]) -> str:
    lines = [
        f"# Loss speed: ours vs naive JAX vs open_clip\n\n`{command}`, {elapsed / 60:.1f} min, one run on "
        f"{platform.machine()} ({os.cpu_count()} CPU cores, 1-minute load average {load[0]:.1f} at the start and "
        f"{load[1]:.1f} at the end, this run included: ratios within a row are "
        "meaningful, absolute times drift). Forward + backward, float32. Cell: median time (min-max over "
        "the rounds), peak RSS of the first call (XLA: the compiled program's buffers per device), fraction of "
        "the square-matmul peak measured in the same rounds. *auto* = the implementation `impl='auto'` picks; "
        "*naive / auto* = the median over the rounds of naive's time / auto's in the same round (above 1: ours "
        "is faster), and its min-max. "
        "Max rel. diff = largest relative difference of loss and gradients from naive.",
        "",
        "| loss | devices | d | B | naive | dense (ours) | tiled (ours) | open_clip | auto | naive / auto | "
        "matmul GFLOP/s | max rel. diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['loss']} | {r['devices']} | {r['dim']} | {r['batch']:,} | {r['error']} |||||||")
            continue
        impls = r["impls"]
        cells = [_cell(impls.get(name)) for name in IMPLS]
        auto, naive = impls.get(r["auto"], {}), impls.get("naive", {})
        ratio = "-"
        if "times" in auto and "times" in naive:
            paired = [n / a for n, a in zip(naive["times"], auto["times"], strict=True)]
            ratio = f"{statistics.median(paired):.2f}x ({min(paired):.2f}-{max(paired):.2f})"
        diff = max((v["max_rel_diff"] for v in impls.values() if "max_rel_diff" in v), default=float("nan"))
        lines.append(f"| {r['loss']} | {r['devices']} | {r['dim']} | {r['batch']:,} | " + " | ".join(cells)
                     + f" | {r['auto']} | {ratio} | {r['peak_flops'] / 1e9:.0f} | {diff:.1e} |")
    return "\n".join(lines) + "\n"


def _short(r: dict | None) -> str:
    if r is None:
        return "-"
    if "error" in r:
        return r["error"].replace("compiled program needs", "needs")
    if r.get("xla_bytes", 0) > GIB / 100:  # XLA's buffers where they are worth a number, else torch's peak RSS
        return f"{_secs(r['seconds'])}, XLA {r['xla_bytes'] / GIB:.2f} GiB"
    big = "xla_bytes" not in r and r["peak"] > 1.1 * GIB
    return _secs(r["seconds"]) + (f", {r['peak'] / GIB:.2f} GiB" if big else "")


def readme_table(runs: list[dict], names: list[str]) -> str:
    """The README's table: every row of the result files ``runs`` (experiments/results/<name>.json, loaded).

    *auto* is what today's ``streamed.auto_impl`` picks for the row (dense and tiled were both timed in the
    same rounds, so a rule changed after the run reads its own paired times)."""
    lines = ["| loss | devices | d | B | naive JAX | ours dense | ours tiled | open_clip (torch CPU) | auto | "
             "naive / auto (paired min-max) | tiled, of matmul peak |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for r in run["rows"]:
            head = f"| {r['loss']} | {r['devices']} | {r['dim']} | {r['batch']:,} | "
            if "error" in r:
                lines.append(head + r["error"] + " |||||||")
                continue
            impls, choice = r["impls"], auto_choice(r["loss"], r["batch"], r["devices"], r["dim"])
            auto, naive, tiled = impls.get(choice, {}), impls.get("naive", {}), impls.get("tiled", {})
            ratio = "-"
            if "times" in auto and "times" in naive:
                paired = [n / a for n, a in zip(naive["times"], auto["times"], strict=True)]
                ratio = f"{statistics.median(paired):.2f}x ({min(paired):.2f}-{max(paired):.2f})"
            peak = f"{tiled['of_peak']:.0%}" if "of_peak" in tiled else "-"
            cells = " | ".join(_short(impls.get(n)) for n in IMPLS)
            lines.append(head + cells + f" | {choice} | {ratio} | {peak} |")
    made = "; ".join(f"`{run['command']}`" for run in runs)
    table = f"`python experiments/loss_speed.py --readme {' '.join(names)}`"
    return "\n".join(lines) + f"\n\nMade by {made}, then {table}.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="B = 256, 512 at d = 32: seconds (the test's run)")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--losses", nargs="+", default=["clip", "siglip"], choices=["clip", "siglip"])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[2**k for k in range(8, 15)])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per case (after one warm-up)")
    parser.add_argument("--budget-gib", type=float, default=16.0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    parser.add_argument("--out", default=None, help="results name (default loss_speed[_quick][_8dev])")
    parser.add_argument("--readme", nargs="+", metavar="NAME",
                        help="only write the README table from experiments/results/NAME.json files (no run)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.readme:
        sys.path.insert(0, str(ROOT))
        from experiments.readme_block import update_readme_block

        runs = [json.loads((RESULTS / f"{name}.json").read_text()) for name in args.readme]
        update_readme_block(README_BLOCK, readme_table(runs, args.readme))
        return
    if args.worker:
        sys.path.insert(0, str(ROOT))
        import contrastive  # noqa: F401 - sets the XLA:CPU workaround flag before any computation

        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.quick:
        args.dims, args.batches, args.repeats = [32], [256, 512], 3
    name = args.out or ("loss_speed" + ("_quick" if args.quick else "") + (f"_{args.devices}dev" if args.devices > 1
                                                                             else ""))
    command = "python " + " ".join(["experiments/loss_speed.py", *sys.argv[1:]])
    start, rows, load = time.time(), [], os.getloadavg()[0]
    for loss in args.losses:
        for dim in args.dims:
            for batch in args.batches:
                cfg = {"loss": loss, "devices": args.devices, "dim": dim, "batch": batch, "repeats": args.repeats,
                       "budget_gib": args.budget_gib}
                rows.append(run_case(cfg, args.timeout))
    text = report(rows, command, time.time() - start, (load, os.getloadavg()[0]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
