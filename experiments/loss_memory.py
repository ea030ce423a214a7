"""Peak memory and fwd+bwd time of the CLIP loss, gather vs ring vs tiled, and of GradCache vs the plain step.

    python experiments/loss_memory.py --quick     # a few minutes on 2 CPU cores
    python experiments/loss_memory.py             # the full sweep, up to B = 131,072 (~30 min on 2 CPU cores)

Every configuration runs in its own subprocess, so its peak memory is the process's peak RSS
(Linux ``VmHWM``; on an accelerator the device's ``peak_bytes_in_use``),
including compilation. Paths (``contrastive.losses.clip``):

* gather: ``impl='gather'`` — all-gathered keys, dense b x B logits (the reference);
* ring:   ``impl='ring'`` — key blocks passed around the devices, one b x b block at a time;
* tiled:  ``impl='ring', chunk_size=c`` — the same, tiled into c x c tiles (on 1 device: no ring).

Beside the measured RSS, every configuration reports what XLA's buffer assignment says the compiled
program needs per device (``compiled.memory_analysis()``: temporaries + arguments + outputs). A
configuration whose compiled program needs more than the budget (default 16 GiB, all devices of this
host together) is compiled but not run, so the table never stands a prediction in for a measurement.
"Largest B within the budget" is given twice: the largest B that ran with peak RSS within the budget, and
the largest power of two (up to 67,108,864) whose compiled program needs at most the budget per device,
found by compiling (not running) each size.

Achieved FLOP/s count the three B x B x d matmuls of forward and backward (similarities; gradients of
both inputs) as the useful work, and are compared with the machine's matmul FLOP/s measured beside them:
a plain ``REFERENCE`` matmul timed in the same process just before and just after the loss (the
machine is shared and its speed drifts; ``MATMUL_SHAPES`` are timed at the start and the end of the run
to show by how much and which shape is fastest). GradCache
(``contrastive.parallel.grad_cache``) runs a small MLP encoder with a fixed
sub-batch against the plain full-batch step (both with the tiled loss, so the encoder is what differs).
The report checks the targets of the issue that asked for this benchmark against the rows.

Writes ``experiments/results/loss_memory{,_quick}.{md,json,png}``; the full sweep also fills the README
block ``memory-table``. ``--render`` rewrites the report, plot and README block from the saved JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
GIB = 2**30
# [n, k] @ [k, n] matmuls timed at the start and at the end of the run: how far the machine's speed drifts,
# and which shape is fastest (a square one; k = 128 at n = 4096 is the slowest).
MATMUL_SHAPES = ((512, 512), (1024, 1024), (2048, 2048), (4096, 128), (4096, 512), (4096, 4096))
REFERENCE = (1024, 1024)  # the fastest of MATMUL_SHAPES on the 2-core CPU; timed before and after each loss
PROBE_MAX = 2**26  # the compile-only probe for "largest B" stops here


# ----------------------------------------------------------------------------------------- worker side
def _peak_bytes() -> int:
    """Peak memory so far: the device's ``peak_bytes_in_use`` on an accelerator, else this process's peak RSS
    (Linux ``VmHWM``: unlike ``ru_maxrss`` it restarts at ``exec``, so a worker started from a big parent,
    such as a test runner, does not inherit the parent's peak)."""
    import resource

    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:  # accelerators: device memory
        return int(stats["peak_bytes_in_use"])
    status = pathlib.Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _xla_bytes(compiled) -> int:
    """Per-device bytes XLA's buffer assignment reserves for the program: temporaries, arguments, outputs."""
    stats = compiled.memory_analysis()
    return int(stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes)


def _time(compiled, args, budget_s: float = 30.0, max_runs: int = 4) -> float:
    """Min wall time of ``compiled(*args)`` over up to ``max_runs`` runs, fewer once ``budget_s`` is spent:
    short steps get a warm-up and repeats (these machines are shared and noisy); at B = 131,072 one step
    is minutes and runs once."""
    import jax

    times = []
    while len(times) < max_runs and sum(times) < budget_s:
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def _unit_rows(key, n, d):
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(key, (n, d))
    return x / jnp.linalg.norm(x, axis=1, keepdims=True)


def _matmul_seconds(n: int, k: int, budget_s: float = 30.0) -> float:
    """Best time of a plain [n, k] @ [k, n] float32 matmul."""
    import jax

    x, y = _unit_rows(jax.random.key(0), n, k), _unit_rows(jax.random.key(1), n, k)
    return _time(jax.jit(lambda a, c: a @ c.T).lower(x, y).compile(), (x, y), budget_s=budget_s, max_runs=6)


def worker_matmul(cfg):
    b, d = cfg["batch"], cfg["dim"]
    seconds = _matmul_seconds(b, d)
    return {"seconds": seconds, "flops": 2 * b * b * d / seconds}


def square_matmul_flops() -> float:
    """The machine's matmul FLOP/s now: the square REFERENCE shape."""
    n, k = REFERENCE
    return 2 * n * n * k / _matmul_seconds(n, k, budget_s=2.0)


def _reference_flops(d: int) -> tuple[float, float]:
    """This process's matmul FLOP/s now, timed beside each loss (the machines are shared, and their speed
    drifts by up to ~2x within an hour; a ratio is only fair side by side): the machine's
    (``square_matmul_flops``) and that of a plain [2048, d] @ [d, 2048] (the loss's contraction depth d)."""
    return square_matmul_flops(), 2 * 2048 * 2048 * d / _matmul_seconds(2048, d, 2.0)


def _loss_step(impl: str, devices: int, chunk: int):
    """fwd+bwd of the CLIP loss on [B, d] inputs, on ``devices`` devices along the ``data`` axis."""
    import jax
    import numpy as np

    from contrastive.losses import clip

    kwargs = {"gather": {"impl": "gather"}, "ring": {"impl": "ring"}, "tiled": {"impl": "ring", "chunk_size": chunk}}[
        impl
    ]

    def loss(image, text):
        if devices == 1:
            return clip(image, text, logit_scale=10.0, **kwargs)[0]
        mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("data",))
        sharded = jax.shard_map(
            lambda a, c: clip(a, c, logit_scale=10.0, axis_name="data", **kwargs)[0],
            mesh=mesh,
            in_specs=jax.P("data"),
            out_specs=jax.P(),
        )
        return sharded(image, text)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def _compile_loss(impl: str, devices: int, dim: int, batch: int, chunk: int):
    import jax
    import jax.numpy as jnp

    shape = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
    return _loss_step(impl, devices, min(chunk, batch // devices)).lower(shape, shape).compile()


def worker_loss(cfg):
    """Compile; run and time only if the compiled program fits the budget on this host."""
    import jax

    b, d, devices = cfg["batch"], cfg["dim"], cfg["devices"]
    baseline = _peak_bytes()
    before = _reference_flops(d)  # before compiling, whose peak RSS hides the reference's ~20 MiB
    compiled = _compile_loss(cfg["impl"], devices, d, b, cfg["chunk"])
    xla = _xla_bytes(compiled)
    result = {"xla_bytes": xla, "baseline": baseline}
    if xla * devices > cfg["budget_gib"] * GIB:
        return result | {
            "error": f"not run: compiled program needs {xla * devices / GIB:.1f} GiB > {cfg['budget_gib']:g} GiB"
        }
    x, y = _unit_rows(jax.random.key(0), b, d), _unit_rows(jax.random.key(1), b, d)
    seconds = _time(compiled, (x, y))
    peak = _peak_bytes()
    flops = 3 * 2 * b * b * d / seconds
    square, same_d = (max(pair) for pair in zip(before, _reference_flops(d), strict=True))
    return result | {
        "seconds": seconds,
        "peak": peak,
        "flops": flops,
        "matmul_flops": square,
        "fraction": flops / square,
        "matmul_d_flops": same_d,
        "fraction_d": flops / same_d,
    }


def worker_probe(cfg):
    """Largest power-of-two B whose compiled program needs at most the budget per device (compiled only)."""
    fits, b = [], cfg["start"]
    while b <= PROBE_MAX:
        xla = _xla_bytes(_compile_loss(cfg["impl"], cfg["devices"], cfg["dim"], b, cfg["chunk"]))
        if xla > cfg["budget_gib"] * GIB:
            return {"largest": max(fits, default=None), "first_over": b, "first_over_bytes": xla}
        fits.append(b)
        b *= 2
    return {"largest": max(fits), "first_over": None, "first_over_bytes": None}


def worker_gradcache(cfg):
    import jax
    import jax.numpy as jnp

    from contrastive.losses import clip
    from contrastive.parallel import grad_cache

    b, sub, width, d_in = cfg["batch"], cfg["sub_batch"], 1024, 512
    keys = jax.random.split(jax.random.key(0), 4)
    params = [
        jax.random.normal(k, shape) / jnp.sqrt(shape[0])
        for k, shape in zip(keys, [(d_in, width), (width, width), (width, width), (width, 128)], strict=True)
    ]

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
    compiled = jax.jit(step).lower(params, batch).compile()
    seconds = _time(compiled, (params, batch))
    return {"seconds": seconds, "peak": _peak_bytes(), "baseline": baseline, "xla_bytes": _xla_bytes(compiled)}


# ----------------------------------------------------------------------------------------- driver side
def _exception_line(stderr: str) -> str:
    """The line of a worker's traceback that names the exception (jax appends a note after it)."""
    lines = stderr.strip().splitlines() or ["?"]
    named = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b", line)]
    return (named or lines)[-1][:300]


def run_config(cfg: dict, timeout: float) -> dict:
    """Run one configuration in a fresh process (its own peak RSS, its own device count)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={cfg.get('devices', 1)}"
    cmd = [sys.executable, __file__, "--worker", json.dumps(cfg)]
    start = time.time()
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        row = cfg | {"error": f"timeout after {timeout:.0f}s"}
    else:
        if out.returncode:
            row = cfg | {"error": _exception_line(out.stderr)}
        else:
            row = cfg | json.loads(out.stdout.strip().splitlines()[-1])
    print(f"[{time.strftime('%H:%M:%S')}, {time.time() - start:.0f} s] {json.dumps(row)}", flush=True)
    return row


def loss_grid(quick: bool):
    """(devices, dim, batches) to sweep."""
    if quick:
        return [(1, 128, [1024, 4096, 16384]), (1, 512, [4096]), (8, 128, [1024, 4096])]
    big = [2**k for k in range(10, 18)]  # 1,024 .. 131,072
    return [(1, 128, big), (1, 512, big[:6]), (8, 128, big[:6]), (8, 512, big[:6])]


def _impls(devices: int):
    # One device: the ring is a single b x B block, i.e. the tiled path untiled.
    return ("gather", "tiled") if devices == 1 else ("gather", "ring", "tiled")


def sweep_losses(args) -> list[dict]:
    rows = []
    for devices, dim, batches in loss_grid(args.quick):
        for impl in _impls(devices):
            for b in batches:
                cfg = {
                    "kind": "loss",
                    "impl": impl,
                    "devices": devices,
                    "dim": dim,
                    "batch": b,
                    "chunk": args.chunk,
                    "budget_gib": args.budget_gib,
                }
                rows.append(run_config(cfg, args.timeout))
                if "error" in rows[-1]:  # over the budget (or failed): larger B would be too
                    break
    return rows


def probe_largest(args) -> list[dict]:
    return [
        run_config(
            {
                "kind": "probe",
                "impl": impl,
                "devices": devices,
                "dim": dim,
                "start": 1024,
                "chunk": args.chunk,
                "budget_gib": args.budget_gib,
            },
            args.timeout,
        )
        for devices, dim, _ in loss_grid(args.quick)
        for impl in _impls(devices)
    ]


def sweep_gradcache(args) -> list[dict]:
    batches = [256, 1024, 4096] if args.quick else [256, 1024, 4096, 16384]
    return [
        run_config({"kind": "gradcache", "impl": impl, "batch": b, "sub_batch": 256}, args.timeout)
        for impl in ("plain", "gradcache")
        for b in batches
    ]


def fmt_gib(x):
    return f"{x / GIB:.2f}" if x is not None else "-"


def _ok(rows, **match):
    return [r for r in rows if "error" not in r and all(r[k] == v for k, v in match.items())]


def check_targets(losses, gradcache, budget_gib) -> list[str]:
    """The issue's targets, each with the measured numbers and 'met' / 'MISSED' / 'not in this sweep'."""

    def verdict(ok):
        return "met" if ok else "MISSED"

    lines = []
    big = _ok(losses, impl="tiled", devices=1, dim=128, batch=131072)
    if big:
        peak = big[0]["peak"]
        lines.append(
            f"- tiled, 1 device, d=128, B=131,072: peak RSS {fmt_gib(peak)} GiB, "
            f"{big[0]['seconds']:.0f} s (target <= 4 GiB): {verdict(peak <= 4 * GIB)}"
        )
    else:
        lines.append("- tiled, 1 device, d=128, B=131,072: not in this sweep")
    gather = [r for r in losses if r["impl"] == "gather" and r["devices"] == 1 and r["dim"] == 128]
    ran, over = [r for r in gather if "error" not in r], [r for r in gather if "xla_bytes" in r and "error" in r]
    if ran:
        lines.append(
            f"- gather, 1 device, d=128: largest B run {max(r['batch'] for r in ran):,} (peak RSS "
            f"{fmt_gib(max(ran, key=lambda r: r['batch'])['peak'])} GiB)"
            + (
                f"; at B={over[0]['batch']:,} its compiled program needs {fmt_gib(over[0]['xla_bytes'])} "
                f"GiB > {budget_gib:g} GiB, so it was not run"
                if over
                else ""
            )
        )
    for devices, dim in sorted({(r["devices"], r["dim"]) for r in losses}):
        ref = _ok(losses, impl="gather", devices=devices, dim=dim)
        if not ref:
            continue
        top = max(ref, key=lambda r: r["batch"])
        for impl in _impls(devices)[1:]:
            other = _ok(losses, impl=impl, devices=devices, dim=dim, batch=top["batch"])
            if other:
                ratio = other[0]["seconds"] / top["seconds"]
                lines.append(
                    f"- {impl} / gather time at gather's largest B ({top['batch']:,}, {devices} device(s), "
                    f"d={dim}): {ratio:.2f}x (target <= 1.3x): {verdict(ratio <= 1.3)}"
                )
    tiled = [r for r in _ok(losses, impl="tiled") if r["batch"] >= 16384]
    if tiled:
        worst = min(tiled, key=lambda r: r["fraction"])
        lines.append(
            f"- tiled FLOP/s as a fraction of the matmul FLOP/s beside it, B >= 16,384: lowest {worst['fraction']:.0%} "
            f"({worst['devices']} device(s), d={worst['dim']}, B={worst['batch']:,}) over {len(tiled)} "
            f"rows (target >= 40%): {verdict(worst['fraction'] >= 0.4)}; per row (devices/d/B): "
            + ", ".join(f"{r['devices']}/{r['dim']}/{r['batch']:,}: {r['fraction']:.0%}" for r in tiled)
            + f". Against the [2048, d] @ [d, 2048] matmul beside it: lowest {min(r['fraction_d'] for r in tiled):.0%}"
        )
    small, large = _ok(gradcache, impl="gradcache", batch=256), _ok(gradcache, impl="gradcache", batch=4096)
    if small and large:
        ratio = large[0]["peak"] / small[0]["peak"]
        lines.append(
            f"- GradCache peak RSS at B=4,096 / at B=256: {fmt_gib(large[0]['peak'])} / "
            f"{fmt_gib(small[0]['peak'])} GiB = {ratio:.2f}x (target <= 1.25x): {verdict(ratio <= 1.25)}"
        )
    pairs = [(p, _ok(gradcache, impl="gradcache", batch=p["batch"])) for p in _ok(gradcache, impl="plain")]
    ratios = [(c[0]["seconds"] / p["seconds"], p["batch"]) for p, c in pairs if c]
    if ratios:
        worst, at = max(ratios)
        lines.append(
            f"- GradCache step / plain step time: at most {worst:.2f}x (B={at:,}) over B = "
            f"{', '.join(f'{b:,}' for _, b in sorted(ratios, key=lambda t: t[1]))} "
            f"(target <= 1.5x): {verdict(worst <= 1.5)}"
        )
    return lines


def _fmt_matmul(matmul, n, k, when) -> str:
    row = _ok(matmul, batch=n, dim=k, when=when)
    return f"{row[0]['flops'] / 1e9:.1f}" if row else "-"


def write_report(matmul, losses, probes, gradcache, args, elapsed, command):
    import platform

    lines = [
        "# Loss memory and speed: gather vs ring vs tiled CLIP, and GradCache",
        "",
        f"`{command}` on {platform.machine()} ({os.cpu_count()} CPU cores), {elapsed / 60:.1f} min, one run. "
        "Peak = the worker process's peak RSS (all devices of the host; includes the JAX runtime, "
        "compilation, inputs and the reference matmuls' ~20 MiB; `baseline` = RSS before compiling). "
        "XLA = the compiled program's buffers "
        "per device (temporaries + arguments + outputs). "
        f"Tiles: chunk_size = min({args.chunk}, b_local). GFLOP/s: 3 x 2 B^2 d useful FLOPs per step "
        "(the three B x B x d matmuls of forward and backward). *matmul* = the machine's matmul GFLOP/s beside "
        f"it: a plain [{REFERENCE[0]}, {REFERENCE[1]}] @ [{REFERENCE[1]}, {REFERENCE[0]}] timed in the same "
        "process just before and just after the loss, the better of the two; *of matmul* = GFLOP/s / matmul. "
        "*d-matmul* and *of d-matmul*: the same with a plain [2048, d] @ [d, 2048] (the loss's contraction "
        "depth d). "
        "The reference is timed beside each row because this shared machine's speed drifts: the same "
        "matmuls at the start and at the end of this run ran at (GFLOP/s, start / end) "
        + ", ".join(
            f"{n}x{k}x{n}: {_fmt_matmul(matmul, n, k, 'start')} / {_fmt_matmul(matmul, n, k, 'end')}"
            for n, k in MATMUL_SHAPES
        )
        + ".",
        "",
        "| path | devices | d | B | peak GiB | baseline GiB | XLA GiB / device | fwd+bwd s | GFLOP/s | matmul "
        "GFLOP/s | of matmul | d-matmul GFLOP/s | of d-matmul |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in losses:
        if "error" in r:
            lines.append(
                f"| {r['impl']} | {r['devices']} | {r['dim']} | {r['batch']:,} | {r['error']} | | "
                f"{fmt_gib(r.get('xla_bytes'))} | | | | | | |"
            )
            continue
        lines.append(
            f"| {r['impl']} | {r['devices']} | {r['dim']} | {r['batch']:,} | {fmt_gib(r['peak'])} | "
            f"{fmt_gib(r['baseline'])} | {fmt_gib(r['xla_bytes'])} | {r['seconds']:.3f} | {r['flops'] / 1e9:.1f} | "
            f"{r['matmul_flops'] / 1e9:.1f} | {r['fraction']:.0%} | {r['matmul_d_flops'] / 1e9:.1f} | "
            f"{r['fraction_d']:.0%} |"
        )
    lines += [
        "",
        f"Largest B within {args.budget_gib:g} GiB: *run* = the largest B that ran with peak RSS within the "
        f"budget (all devices of this host together); *compiled* = the largest power of two up to "
        f"{PROBE_MAX:,} whose compiled program needs at most the budget per device (compiled, not run).",
        "",
        "| path | devices | d | run | compiled | first B over the budget (XLA GiB / device) |",
        "|---|---|---|---|---|---|",
    ]
    for p in probes:
        ran = [
            r["batch"]
            for r in _ok(losses, impl=p["impl"], devices=p["devices"], dim=p["dim"])
            if r["peak"] <= args.budget_gib * GIB
        ]
        over = (
            f"{p['first_over']:,} ({fmt_gib(p['first_over_bytes'])})"
            if p.get("first_over")
            else p.get("error", f"none up to {PROBE_MAX:,}")
        )
        largest = f"{p['largest']:,}" if p.get("largest") else "-"
        lines.append(
            f"| {p['impl']} | {p['devices']} | {p['dim']} | {f'{max(ran):,}' if ran else '-'} | {largest} | {over} |"
        )
    lines += [
        "",
        "GradCache (MLP 512-1024-1024-1024-128, two inputs per example, sub-batch 256) vs the plain step:",
        "",
        "| step | B | peak GiB | baseline GiB | XLA GiB | step s |",
        "|---|---|---|---|---|---|",
    ]
    for r in gradcache:
        if "error" in r:
            lines.append(f"| {r['impl']} | {r['batch']:,} | {r['error']} | | | |")
        else:
            lines.append(
                f"| {r['impl']} | {r['batch']:,} | {fmt_gib(r['peak'])} | {fmt_gib(r['baseline'])} | "
                f"{fmt_gib(r['xla_bytes'])} | {r['seconds']:.3f} |"
            )
    lines += ["", "Targets:", "", *check_targets(losses, gradcache, args.budget_gib)]
    return "\n".join(lines) + "\n"


def readme_block(losses, probes, gradcache, args, command) -> str:
    """The README's short version: d = 128 on 1 device, gather vs tiled, and the targets."""
    lines = [
        f"`{command}` (2 shared CPU cores; every row, d = 512, 8 devices and the plot in",
        "`experiments/results/loss_memory.md`), CLIP loss forward + backward, d = 128, 1 device, peak RSS:",
        "",
        f"| B | gather | tiled (chunk {args.chunk}) | gather / tiled time |",
        "|---|---|---|---|",
    ]
    for b in sorted({r["batch"] for r in losses if r["devices"] == 1 and r["dim"] == 128}):
        cells = []
        for impl in ("gather", "tiled"):
            row = [r for r in losses if (r["impl"], r["devices"], r["dim"], r["batch"]) == (impl, 1, 128, b)]
            if not row:
                cells.append("")
            elif "error" in row[0]:
                cells.append(f"not run: needs {fmt_gib(row[0].get('xla_bytes'))} GiB (compiled)")
            else:
                cells.append(f"{fmt_gib(row[0]['peak'])} GiB, {row[0]['seconds']:.3g} s")
        g, t = (
            _ok(losses, impl="gather", devices=1, dim=128, batch=b),
            _ok(losses, impl="tiled", devices=1, dim=128, batch=b),
        )
        ratio = f"{g[0]['seconds'] / t[0]['seconds']:.2f}x" if g and t else ""
        lines.append(f"| {b:,} | {cells[0]} | {cells[1]} | {ratio} |")
    largest = [
        f"{p['impl']} {p['largest']:,} ({p['devices']} device(s), d={p['dim']})" for p in probes if p.get("largest")
    ]
    lines += [
        "",
        f"Largest power-of-two B whose compiled program needs at most {args.budget_gib:g} GiB per device "
        f"(compiled, not run): {'; '.join(largest)}.",
        "",
        "Targets (checked by the script against the rows above and in the full table):",
        "",
        *check_targets(losses, gradcache, args.budget_gib),
    ]
    return "\n".join(lines) + "\n"


def plot(losses, gradcache, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for key in sorted({(r["impl"], r["devices"], r["dim"]) for r in losses}):
        ok = _ok(losses, impl=key[0], devices=key[1], dim=key[2])
        if ok:
            label = f"{key[0]}, {key[1]} dev, d={key[2]}"
            axes[0].plot([r["batch"] for r in ok], [r["peak"] / GIB for r in ok], "o-", label=label)
            axes[1].plot([r["batch"] for r in ok], [r["seconds"] for r in ok], "o-", label=label)
    for impl in ("plain", "gradcache"):
        ok = _ok(gradcache, impl=impl)
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
    parser.add_argument("--no-readme", action="store_true", help="do not update README.md")
    parser.add_argument(
        "--render",
        action="store_true",
        help="rewrite the report, plot and README block from the saved results JSON, measuring nothing",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        sys.path.insert(0, str(ROOT))
        import contrastive  # noqa: F401 - sets the XLA:CPU workaround flag before any computation

        cfg = json.loads(args.worker)
        worker = {"matmul": worker_matmul, "loss": worker_loss, "probe": worker_probe, "gradcache": worker_gradcache}[
            cfg["kind"]
        ]
        print(json.dumps(worker(cfg)))
        return
    command = "python experiments/loss_memory.py" + (" --quick" if args.quick else "")
    name = "loss_memory_quick" if args.quick else "loss_memory"
    if args.render:
        data = json.loads((RESULTS / f"{name}.json").read_text())
    else:
        start = time.time()

        def time_matmuls(when):
            return [
                run_config({"kind": "matmul", "batch": n, "dim": k, "when": when}, args.timeout)
                for n, k in MATMUL_SHAPES
            ]

        matmul = time_matmuls("start")
        losses = sweep_losses(args)
        matmul += time_matmuls("end")
        probes, gradcache = probe_largest(args), sweep_gradcache(args)
        data = {
            "matmul": matmul,
            "losses": losses,
            "probes": probes,
            "gradcache": gradcache,
            "elapsed_s": time.time() - start,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1))
    losses, gradcache = data["losses"], data["gradcache"]
    report = write_report(data["matmul"], losses, data["probes"], gradcache, args, data["elapsed_s"], command)
    (RESULTS / f"{name}.md").write_text(report)
    plot(losses, gradcache, RESULTS / f"{name}.png")
    if not args.quick and not args.no_readme and args.budget_gib == 16.0 and args.chunk == 512:
        sys.path.insert(0, str(ROOT))
        from experiments.readme_block import update_readme_block

        update_readme_block("memory-table", readme_block(losses, data["probes"], gradcache, args, command))
    print(report)


if __name__ == "__main__":
    main()
