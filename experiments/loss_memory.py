"""Peak memory and fwd+bwd time of the CLIP loss, gather vs ring vs tiled, and of GradCache vs the plain step.

    python experiments/loss_memory.py --quick     # a few minutes on 2 CPU cores
    python experiments/loss_memory.py             # up to B = 131,072 (long on CPU)

Every configuration runs in its own subprocess, so its peak memory is the process's peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``; on an accelerator the device's ``peak_bytes_in_use``),
including compilation. Paths (``contrastive.losses.clip``):

* gather: ``impl='gather'`` — all-gathered keys, dense b x B logits (the reference);
* ring:   ``impl='ring'`` — key blocks passed around the devices, one b x b block at a time;
* tiled:  ``impl='ring', chunk_size=c`` — the same, tiled into c x c tiles (on 1 device: no ring).

Achieved FLOP/s count the three B x B x d matmuls of forward and backward (similarities; gradients of
both inputs) as the useful work, and are compared with a plain [B, d] @ [d, B] matmul measured in the
same run. GradCache (``contrastive.parallel.grad_cache``) runs a small MLP encoder with a fixed
sub-batch against the plain full-batch step (both with the tiled loss, so the encoder is what differs).
Writes ``experiments/results/loss_memory.md`` and ``loss_memory.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
GIB = 2**30


# ----------------------------------------------------------------------------------------- worker side
def _peak_bytes() -> int:
    import resource

    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:  # accelerators: device memory
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _time(fn, args, repeats: int) -> float:
    import jax

    compiled = jax.jit(fn).lower(*args).compile()
    if repeats > 1:  # a warm-up matters for short steps only; at B = 131,072 one step is minutes
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def _unit_rows(key, n, d):
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(key, (n, d))
    return x / jnp.linalg.norm(x, axis=1, keepdims=True)


def worker_matmul(cfg):
    import jax

    b, d = cfg["batch"], cfg["dim"]
    x, y = _unit_rows(jax.random.key(0), b, d), _unit_rows(jax.random.key(1), b, d)
    seconds = _time(lambda a, c: a @ c.T, (x, y), repeats=5)
    return {"seconds": seconds, "flops": 2 * b * b * d / seconds}


def worker_loss(cfg):
    import jax

    from contrastive.losses import clip

    b, d, devices = cfg["batch"], cfg["dim"], cfg["devices"]
    kwargs = {"gather": {"impl": "gather"}, "ring": {"impl": "ring"},
              "tiled": {"impl": "ring", "chunk_size": cfg["chunk"]}}[cfg["impl"]]

    def loss(image, text):
        if devices == 1:
            return clip(image, text, logit_scale=10.0, **kwargs)[0]
        mesh = jax.sharding.Mesh(jax.devices()[:devices], ("data",))
        sharded = jax.shard_map(
            lambda a, c: clip(a, c, logit_scale=10.0, axis_name="data", **kwargs)[0],
            mesh=mesh, in_specs=jax.P("data"), out_specs=jax.P(),
        )
        return sharded(image, text)

    x, y = _unit_rows(jax.random.key(0), b, d), _unit_rows(jax.random.key(1), b, d)
    baseline = _peak_bytes()
    seconds = _time(jax.value_and_grad(loss, argnums=(0, 1)), (x, y), repeats=3 if b <= 4096 else 1)
    return {"seconds": seconds, "peak": _peak_bytes(), "baseline": baseline, "flops": 3 * 2 * b * b * d / seconds}


def worker_gradcache(cfg):
    import jax
    import jax.numpy as jnp

    from contrastive.losses import clip
    from contrastive.parallel import grad_cache

    b, sub, width, d_in = cfg["batch"], cfg["sub_batch"], 1024, 512
    keys = jax.random.split(jax.random.key(0), 4)
    params = [jax.random.normal(k, shape) / jnp.sqrt(shape[0]) for k, shape in
              zip(keys, [(d_in, width), (width, width), (width, width), (width, 128)], strict=True)]

    def encode(p, x, _key=None):
        for w in p[:-1]:
            x = jax.nn.gelu(x @ w)
        return x @ p[-1]

    def loss(reps):  # tiled, so that only the encoder's memory differs between the two steps
        return clip(*reps, logit_scale=10.0, chunk_size=min(256, b))

    def encode_pair(p, batch, key):
        return encode(p, batch[0]), encode(p, batch[1])

    def plain(p, batch):
        return jax.value_and_grad(lambda q: loss(encode_pair(q, batch, None))[0])(p)

    def cached(p, batch):
        value, _, grads = grad_cache(encode_pair, loss, p, batch, num_chunks=b // sub)
        return value, grads

    batch = (jax.random.normal(keys[0], (b, d_in)), jax.random.normal(keys[1], (b, d_in)))
    baseline = _peak_bytes()
    step = cached if cfg["impl"] == "gradcache" else plain
    seconds = _time(step, (params, batch), repeats=3 if b <= 1024 else 1)
    return {"seconds": seconds, "peak": _peak_bytes(), "baseline": baseline}


# ----------------------------------------------------------------------------------------- driver side
def run_config(cfg: dict, timeout: float) -> dict:
    """Run one configuration in a fresh process (its own peak RSS, its own device count)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={cfg.get('devices', 1)}"
    cmd = [sys.executable, __file__, "--worker", json.dumps(cfg)]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return cfg | {"error": f"timeout after {timeout:.0f}s"}
    if out.returncode:
        return cfg | {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return cfg | json.loads(out.stdout.strip().splitlines()[-1])


def loss_grid(quick: bool):
    """(devices, dim, batches) to sweep; gather stops once its predicted memory exceeds the budget."""
    if quick:
        return [(1, 128, [1024, 4096, 16384]), (1, 512, [4096]), (8, 128, [1024, 4096])]
    big = [2**k for k in range(10, 18)]  # 1,024 .. 131,072
    return [(1, 128, big), (1, 512, big[:6]), (8, 128, big[:6])]


def sweep_losses(args) -> list[dict]:
    rows = []
    for devices, dim, batches in loss_grid(args.quick):
        for impl in ("gather", "ring", "tiled"):
            if impl == "ring" and devices == 1:
                continue  # one device: the ring is a single b x B block, i.e. the tiled path untiled
            last_peak = None
            for b in batches:
                # The gather / ring paths hold quadratic blocks: predict x4 per doubling, skip beyond budget.
                if impl != "tiled" and last_peak is not None and last_peak * 4 > args.budget_gib * GIB:
                    rows.append({"impl": impl, "devices": devices, "dim": dim, "batch": b,
                                 "error": f"skipped: predicted > {args.budget_gib} GiB"})
                    break
                chunk = min(args.chunk, b // devices)
                cfg = {"kind": "loss", "impl": impl, "devices": devices, "dim": dim, "batch": b, "chunk": chunk}
                row = run_config(cfg, args.timeout)
                print(json.dumps(row), flush=True)
                rows.append(row)
                last_peak = row.get("peak")
                if "error" in row:
                    break
    return rows


def sweep_gradcache(args) -> list[dict]:
    batches = [256, 1024, 4096] if args.quick else [256, 1024, 4096, 16384]
    rows = []
    for impl in ("plain", "gradcache"):
        for b in batches:
            row = run_config({"kind": "gradcache", "impl": impl, "batch": b, "sub_batch": 256}, args.timeout)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def fmt_gib(x):
    return f"{x / GIB:.2f}" if x is not None else "-"


def write_report(matmul, losses, gradcache, args, elapsed):
    import platform

    lines = [
        "# Loss memory and speed: gather vs ring vs tiled CLIP, and GradCache",
        "",
        f"`python experiments/loss_memory.py{' --quick' if args.quick else ''}` on {platform.machine()} "
        f"({os.cpu_count()} CPU cores), {elapsed / 60:.1f} min. Peak = the worker process's peak RSS "
        "(includes the JAX runtime, compilation and inputs; `baseline` = RSS before the loss ran). "
        f"Tiles: chunk_size = min({args.chunk}, b_local). FLOP fraction: 3 x 2 B^2 d useful FLOPs per step "
        "over the matmul FLOP/s measured in the same run "
        + ", ".join(f"(d={m['dim']}: {m['flops'] / 1e9:.1f} GFLOP/s)" for m in matmul) + ".",
        "",
        "| path | devices | d | B | peak GiB | baseline GiB | fwd+bwd s | GFLOP/s | of matmul |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ref = {m["dim"]: m["flops"] for m in matmul}
    for r in losses:
        if "error" in r:
            lines.append(f"| {r['impl']} | {r['devices']} | {r['dim']} | {r['batch']:,} | {r['error']} |||||")
            continue
        lines.append(
            f"| {r['impl']} | {r['devices']} | {r['dim']} | {r['batch']:,} | {fmt_gib(r['peak'])} | "
            f"{fmt_gib(r['baseline'])} | {r['seconds']:.3f} | {r['flops'] / 1e9:.1f} | "
            f"{r['flops'] / ref[r['dim']]:.0%} |"
        )
    lines += ["", f"Largest B within {args.budget_gib} GiB peak (of those run):", ""]
    for key in sorted({(r["impl"], r["devices"], r["dim"]) for r in losses}):
        ok = [r["batch"] for r in losses if (r["impl"], r["devices"], r["dim"]) == key and "error" not in r
              and r["peak"] <= args.budget_gib * GIB]
        lines.append(f"- {key[0]}, {key[1]} device(s), d={key[2]}: {max(ok):,}" if ok else f"- {key}: none")
    lines += ["", "GradCache (MLP 512-1024-1024-1024-128, two inputs per example, sub-batch 256) vs the plain step:",
              "", "| step | B | peak GiB | baseline GiB | step s |", "|---|---|---|---|---|"]
    for r in gradcache:
        if "error" in r:
            lines.append(f"| {r['impl']} | {r['batch']:,} | {r['error']} |||")
        else:
            lines.append(f"| {r['impl']} | {r['batch']:,} | {fmt_gib(r['peak'])} | {fmt_gib(r['baseline'])} | "
                         f"{r['seconds']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(losses, gradcache, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for key in sorted({(r["impl"], r["devices"], r["dim"]) for r in losses}):
        ok = [r for r in losses if (r["impl"], r["devices"], r["dim"]) == key and "error" not in r]
        if ok:
            label = f"{key[0]}, {key[1]} dev, d={key[2]}"
            axes[0].plot([r["batch"] for r in ok], [r["peak"] / GIB for r in ok], "o-", label=label)
            axes[1].plot([r["batch"] for r in ok], [r["seconds"] for r in ok], "o-", label=label)
    for impl in ("plain", "gradcache"):
        ok = [r for r in gradcache if r["impl"] == impl and "error" not in r]
        axes[2].plot([r["batch"] for r in ok], [r["peak"] / GIB for r in ok], "o-", label=impl)
    titles = ["CLIP loss fwd+bwd: peak RSS (GiB)", "CLIP loss fwd+bwd: time (s)", "encoder step: peak RSS (GiB)"]
    for ax, title in zip(axes, titles, strict=True):
        ax.set(xscale="log", yscale="log", xlabel="global batch B", title=title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sweep (a few minutes on CPU)")
    parser.add_argument("--budget-gib", type=float, default=16.0, help="memory budget for 'largest B'")
    parser.add_argument("--chunk", type=int, default=512, help="tile size of the tiled path")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per configuration")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        sys.path.insert(0, str(ROOT))
        import contrastive  # noqa: F401 - sets the XLA:CPU workaround flag before any computation

        cfg = json.loads(args.worker)
        worker = {"matmul": worker_matmul, "loss": worker_loss, "gradcache": worker_gradcache}[cfg["kind"]]
        print(json.dumps(worker(cfg)))
        return
    start = time.time()
    matmul = [run_config({"kind": "matmul", "batch": 4096, "dim": d}, args.timeout) for d in (128, 512)]
    print(json.dumps(matmul), flush=True)
    losses, gradcache = sweep_losses(args), sweep_gradcache(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = write_report(matmul, losses, gradcache, args, time.time() - start)
    (RESULTS / "loss_memory.md").write_text(report)
    (RESULTS / "loss_memory.json").write_text(json.dumps({"matmul": matmul, "losses": losses,
                                                          "gradcache": gradcache}, indent=1))
    plot(losses, gradcache, RESULTS / "loss_memory.png")
    print(report)


if __name__ == "__main__":
    main()
