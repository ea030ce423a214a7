"""Checks for contrastive losses, yours included: the ones every loss test of this package runs.

A loss here follows the package's contract: ``loss, metrics = loss_fn(*args, **hparams, axis_name=None)``
returns a float32 scalar and a dict of scalar metrics. Inside ``jax.shard_map`` with the batch sharded
over ``axis_name`` every device returns the loss of the GLOBAL batch (gather the negatives, reduce with
``psum`` / ``pmean``; see ``contrastive.losses.core.gather_rows``). The first ``num_diff`` positional
arguments are the differentiable ones (embeddings, a learnable scale); the rest (labels) are not.

Each check raises ``AssertionError`` saying what differed (which output, max |diff|, where):

* :func:`check_devices`: value, metrics and gradients on N devices equal those on one device. This is
  the check that catches negatives taken from the local device only, or gathered without gradients.
* :func:`check_gradient`: ``jax.grad`` equals central finite differences of a float64 NumPy reference.
* :func:`check_finite_at_large_logits`: value, metrics and gradients stay finite at logits of ~1e4
  (catches ``log(sum(exp(.)))`` written out instead of ``logsumexp``).
* :func:`check_bfloat16`: bfloat16 inputs give a float32 loss close to the float32-input loss.
* :func:`check_permutation_invariance`: permuting the batch rows leaves the loss unchanged and permutes
  the gradients the same way.
* :func:`check_loss`: all of the above that apply, every failure reported together.

``check_devices`` needs more than one device. On a CPU, get 8 virtual ones by setting
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX is imported (e.g. at the top of
``conftest.py``). Example, with a float64 NumPy ``reference(x, y, *, temperature)`` of ``my_loss``::

    import numpy as np
    from contrastive import testing

    x, y = np.random.default_rng(0).standard_normal((2, 16, 8), dtype=np.float32)
    testing.check_loss(my_loss, (x, y), 2, reference_fn=reference,
                       large_logit_hparams={"temperature": 1e-4}, temperature=0.5)

Hyper-parameters (``**hparams``) are traced arguments of one cached, jitted ``value_and_grad``, so
changing them does not recompile; options that must be Python values at trace time (flags, strategies,
ints used as shapes) go in ``static``. A hyper-parameter with the same name as a check's own option
(``static``, ``rtol``, ``atol``, ``scale``, ...) must be bound with ``functools.partial`` instead.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

__all__ = [
    "assert_finite",
    "assert_trees_close",
    "check_bfloat16",
    "check_devices",
    "check_finite_at_large_logits",
    "check_gradient",
    "check_loss",
    "check_permutation_invariance",
    "data_mesh",
    "finite_difference_grad",
    "value_and_grad",
]

AXIS = "data"
_VIRTUAL_DEVICES_HINT = (
    "set XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax is imported "
    "(e.g. at the top of conftest.py) to get 8 virtual CPU devices"
)


# ----------------------------------------------------------------------------------------- running a loss
def data_mesh() -> Mesh:
    """A 1-D mesh over all devices with axis name ``'data'``."""
    return Mesh(np.array(jax.devices()), (AXIS,))


@functools.cache
def _value_and_grad(loss_fn, num_diff, distributed, static):
    static = dict(static)

    def loss(args, hparams):
        if not distributed:
            return loss_fn(*args, **hparams, **static)
        # Batch arrays are sharded on 'data'; scalars (e.g. a learnable logit scale) are replicated.
        specs = tuple(P(AXIS) if jnp.ndim(a) else P() for a in args)
        return jax.shard_map(
            lambda a, h: loss_fn(*a, **h, axis_name=AXIS, **static),
            mesh=data_mesh(),
            in_specs=(specs, P()),
            out_specs=P(),
        )(args, hparams)

    def value_and_grad(*args, **hparams):
        diff, rest = args[:num_diff], args[num_diff:]
        return jax.value_and_grad(lambda d: loss(d + rest, hparams), has_aux=True)(diff)

    return jax.jit(value_and_grad)


def value_and_grad(loss_fn: Callable, num_diff: int, *, distributed: bool = False, **static) -> Callable:
    """Jitted ``(*args, **hparams) -> ((loss, metrics), grads)``, grads a tuple for the first num_diff args.

    With ``distributed=True`` the loss runs under ``jax.shard_map`` over all devices with
    ``axis_name='data'``: array arguments are split along their first axis, scalars replicated, and the
    (replicated) global loss is returned. ``static`` keyword arguments are fixed at compile time; the
    ones given to the returned function are traced. The compiled function is cached per
    ``(loss_fn, num_diff, distributed, static)``, so calling this again costs nothing.
    """
    return _value_and_grad(loss_fn, num_diff, distributed, tuple(sorted(static.items())))


def finite_difference_grad(f: Callable, *args, eps: float = 1e-6) -> list[np.ndarray]:
    """Central differences ``(f(a + eps) - f(a - eps)) / 2 eps`` of a float64 scalar function, per element
    of each argument (2 calls of ``f`` per element: keep the arrays small)."""
    args = [np.array(a, np.float64) for a in args]
    grads = []
    for a in args:
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            orig = a[idx]
            a[idx] = orig + eps
            up = f(*args)
            a[idx] = orig - eps
            down = f(*args)
            a[idx] = orig
            g[idx] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


# ----------------------------------------------------------------------------------------- comparisons
def _named(result) -> dict:
    """``((loss, metrics), grads)`` as ``{'loss': ..., 'metrics': ..., 'gradient of args[i]': ...}``."""
    (loss, metrics), grads = result
    return {"loss": loss, "metrics": metrics, **{f"gradient of args[{i}]": g for i, g in enumerate(grads)}}


def _label(path) -> str:
    if path and isinstance(path[0], jax.tree_util.DictKey) and isinstance(path[0].key, str):
        return path[0].key + jax.tree_util.keystr(tuple(path[1:]))
    return jax.tree_util.keystr(tuple(path)) or "value"


def _to_f64(x) -> np.ndarray:
    return np.asarray(x).astype(np.float64)


def _leaf_mismatch(label, actual, expected, rtol, atol, names) -> str | None:
    a, e = _to_f64(actual), _to_f64(expected)
    if a.shape != e.shape:
        return f"  {label}: shape {a.shape} ({names[0]}) != {e.shape} ({names[1]})"
    with np.errstate(invalid="ignore"):
        diff = np.abs(a - e)
        same = (a == e) | (np.isnan(a) & np.isnan(e)) | (diff <= atol + rtol * np.abs(e))
    if np.all(same):
        return None
    excess = np.where(same, -np.inf, np.nan_to_num(diff - atol - rtol * np.abs(e), nan=np.inf))
    idx = np.unravel_index(np.argmax(excess), a.shape)
    where = f" at index {tuple(int(i) for i in idx)}" if a.ndim else ""
    finite = ~same & np.isfinite(diff)
    max_diff = f"max |diff| {np.max(diff[finite]):.3g}" if np.any(finite) else "no finite |diff|"
    return (
        f"  {label}: {int(np.sum(~same))} of {a.size} elements differ, {max_diff}; worst{where}: "
        f"{names[0]} {a[idx]:.8g} vs {names[1]} {e[idx]:.8g} (allowed |diff| <= {atol:g} + {rtol:g} * "
        f"|{names[1]}|)"
    )


def assert_trees_close(actual, expected, rtol=1e-5, atol=1e-6, *, names=("actual", "expected"), header=""):
    """Assert two pytrees have the same structure and elementwise ``|a - e| <= atol + rtol * |e|``.

    The ``AssertionError`` lists every leaf that differs: its path, how many elements, the max |diff|
    and the worst element with both values. ``names`` label the two sides in that message.
    """
    a_paths, a_tree = jax.tree_util.tree_flatten_with_path(actual)
    e_paths, e_tree = jax.tree_util.tree_flatten_with_path(expected)
    header = f"{header}\n" if header else ""
    if a_tree != e_tree:
        raise AssertionError(f"{header}  tree structures differ: {a_tree} ({names[0]}) vs {e_tree} ({names[1]})")
    lines = [_leaf_mismatch(_label(p), a, e, rtol, atol, names) for (p, a), (_, e) in zip(a_paths, e_paths)]
    lines = [line for line in lines if line is not None]
    if lines:
        raise AssertionError(header + "\n".join(lines))


def assert_finite(result, *, header: str = "") -> None:
    """Assert the loss, every metric and every gradient of a ``((loss, metrics), grads)`` result are finite."""
    lines = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(_named(result))[0]:
        x = _to_f64(leaf)
        bad = ~np.isfinite(x)
        if np.any(bad):
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            where = f", first at index {first}" if x.ndim else ""
            lines.append(f"  {_label(path)}: {int(np.sum(bad))} of {x.size} elements not finite{where}")
    if lines:
        raise AssertionError((f"{header}\n" if header else "") + "\n".join(lines))


# ----------------------------------------------------------------------------------------- the checks
def check_devices(loss_fn, args, num_diff, static=None, rtol=1e-5, atol=1e-6, **hparams) -> None:
    """Value, metrics and gradients on all N devices (``shard_map``, batch split over ``'data'``) equal
    those on one device.

    Proves the loss is the loss of the global batch whatever the sharding: negatives gathered from every
    device, gathered WITH their gradients (an ``all_gather`` whose transpose sends each key's gradient
    back to its owner), and a global reduction. A loss that only uses the local device's negatives
    differs in value; one that gathers the keys under ``stop_gradient`` (as ``torch.distributed.all_gather``
    does) has the right value but wrong gradients. Array arguments need a first axis divisible by N.
    """
    n = len(jax.devices())
    if n < 2:
        raise AssertionError(f"check_devices needs more than one device, found {n}: {_VIRTUAL_DEVICES_HINT}")
    for i, a in enumerate(args):
        if jnp.ndim(a) and jnp.shape(a)[0] % n:
            raise ValueError(f"args[{i}] has {jnp.shape(a)[0]} rows, not divisible by the {n} devices")
    static = static or {}
    one = value_and_grad(loss_fn, num_diff, **static)(*args, **hparams)
    try:
        many = value_and_grad(loss_fn, num_diff, distributed=True, **static)(*args, **hparams)
    except ValueError as e:
        if "out_specs" not in str(e):
            raise
        raise AssertionError(
            f"{n} devices: the loss or a metric differs between devices; every device must return the "
            "global-batch value (reduce with jax.lax.psum / pmean over axis_name)"
        ) from e
    assert_trees_close(
        _named(many), _named(one), rtol, atol, names=(f"{n} devices", "1 device"),
        header=f"check_devices: {getattr(loss_fn, '__name__', loss_fn)} on {n} devices != on 1 device:",
    )


def check_gradient(
    loss_fn, reference_fn, args, num_diff, *, static=None, rtol=1e-4, atol=1e-5, eps=1e-6, check_value=True,
    **hparams,
) -> None:
    """``jax.grad`` of the loss equals central finite differences of ``reference_fn``, a float64 NumPy
    version of it called as ``reference_fn(*args, **hparams)`` (the first num_diff args as float64 arrays).

    Proves a hand-written or ``custom_vjp`` backward pass (and any ``stop_gradient``) is right, not just
    the forward value. With ``check_value`` the loss must also equal the reference's value.
    """
    static = static or {}
    (loss, _), grads = value_and_grad(loss_fn, num_diff, **static)(*args, **hparams)
    rest = tuple(args[num_diff:])
    ref = lambda *d: float(reference_fn(*d, *rest, **hparams))
    name = getattr(loss_fn, "__name__", loss_fn)
    expected = {}
    if check_value:
        expected["loss"] = ref(*(np.asarray(a, np.float64) for a in args[:num_diff]))
    fd = finite_difference_grad(ref, *args[:num_diff], eps=eps)
    expected.update({f"gradient of args[{i}]": g for i, g in enumerate(fd)})
    actual = {"loss": loss} if check_value else {}
    actual.update({f"gradient of args[{i}]": g for i, g in enumerate(grads)})
    assert_trees_close(
        actual, expected, rtol, atol, names=("jax", "reference"),
        header=f"check_gradient: {name} != float64 reference (finite differences, eps={eps:g}):",
    )


def _floating(a) -> bool:
    return jnp.issubdtype(jnp.result_type(a), jnp.floating)


def check_finite_at_large_logits(loss_fn, args, num_diff, *, scale=1e4, static=None, **hparams) -> None:
    """Value, metrics and gradients stay finite when the logits reach ~``scale``.

    Each differentiable argument of rank >= 2 is multiplied by one factor so that its rows (last axis)
    have RMS norm ``sqrt(scale)``: dot-product logits ``<x_i, y_j>`` then reach ~``scale``. Losses that
    normalise their inputs (cosine similarity) are unchanged by that; give them the large logits through
    the hyper-parameters instead (e.g. ``temperature=1e-4``), the check runs with the ``hparams`` given.
    Proves the loss is computed in log space: ``log(sum(exp(logits)))`` overflows float32 above ~88.
    """
    scaled = list(args)
    for i, a in enumerate(args[:num_diff]):
        if jnp.ndim(a) >= 2 and _floating(a):
            rms = math.sqrt(float(np.mean(np.sum(_to_f64(a) ** 2, axis=-1))))
            if rms > 0:
                scaled[i] = jnp.asarray(a) * (math.sqrt(scale) / rms)
    result = value_and_grad(loss_fn, num_diff, **(static or {}))(*scaled, **hparams)
    shown = {k: v for k, v in hparams.items() if np.ndim(v) == 0}  # scalars only, not e.g. a key queue
    name = getattr(loss_fn, "__name__", loss_fn)
    assert_finite(result, header=f"check_finite_at_large_logits: {name} at scale {scale:g}, hparams {shown}:")


def check_bfloat16(loss_fn, args, num_diff, *, atol=1e-2, static=None, **hparams) -> None:
    """bfloat16 inputs (the floating differentiable args cast) give a float32 loss within ``atol`` of the
    loss of the float32 inputs.

    Proves the similarities and the reduction are computed in float32: a loss computed in the input
    dtype returns bfloat16, or drifts by bfloat16's ~3 significant digits.
    """
    f = value_and_grad(loss_fn, num_diff, **(static or {}))
    cast = [jnp.asarray(a, jnp.bfloat16) if i < num_diff and _floating(a) else a for i, a in enumerate(args)]
    (loss_bf16, _), _ = f(*cast, **hparams)
    (loss_f32, _), _ = f(*args, **hparams)
    header = f"check_bfloat16: {getattr(loss_fn, '__name__', loss_fn)} with bfloat16 inputs:"
    if loss_bf16.dtype != jnp.float32:
        raise AssertionError(f"{header}\n  loss has dtype {loss_bf16.dtype}, expected float32")
    assert_trees_close(loss_bf16, loss_f32, 0.0, atol, names=("bfloat16 inputs", "float32 inputs"), header=header)


def check_permutation_invariance(
    loss_fn, args, num_diff, *, seed=0, batch_args: Sequence[int] | None = None, static=None, rtol=1e-5,
    atol=1e-6, **hparams,
) -> None:
    """Permuting the rows of all batch arguments together leaves the loss unchanged and permutes the
    gradients of the differentiable batch arguments the same way (others' gradients unchanged).

    ``batch_args``: indices of the arguments whose first axis is the batch; by default every array
    argument with as many rows as the first one. Proves the loss does not depend on the order of the
    examples (e.g. positives found by position after a shuffle, or per-position weights).
    """
    if batch_args is None:
        n = next(jnp.shape(a)[0] for a in args if jnp.ndim(a))
        batch_args = [i for i, a in enumerate(args) if jnp.ndim(a) and jnp.shape(a)[0] == n]
    n = jnp.shape(args[batch_args[0]])[0]
    if n < 2:
        raise ValueError("check_permutation_invariance needs at least 2 rows")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    while np.array_equal(perm, np.arange(n)):
        perm = rng.permutation(n)
    permuted = [np.asarray(a)[perm] if i in batch_args else a for i, a in enumerate(args)]
    f = value_and_grad(loss_fn, num_diff, **(static or {}))
    (loss, _), grads = f(*args, **hparams)
    (loss_p, _), grads_p = f(*permuted, **hparams)
    expected = {"loss": loss}
    expected.update({f"gradient of args[{i}]": np.asarray(g)[perm] if i in batch_args else g
                     for i, g in enumerate(grads)})
    actual = {"loss": loss_p, **{f"gradient of args[{i}]": g for i, g in enumerate(grads_p)}}
    assert_trees_close(
        actual, expected, rtol, atol, names=("permuted", "original"),
        header=f"check_permutation_invariance: {getattr(loss_fn, '__name__', loss_fn)} changes when the rows of "
        f"args{list(batch_args)} are permuted (seed {seed}):",
    )


CHECKS = ("devices", "gradient", "large_logits", "bfloat16", "permutation")


def check_loss(
    loss_fn, args, num_diff, *, reference_fn=None, static=None, large_logit_hparams=None, skip=(), seed=0,
    **hparams,
) -> tuple[str, ...]:
    """Run every check that applies and raise one ``AssertionError`` listing all that failed.

    "devices" (:func:`check_devices`), "gradient" (:func:`check_gradient`, only with ``reference_fn``),
    "large_logits" (:func:`check_finite_at_large_logits`, with ``hparams`` updated by
    ``large_logit_hparams``, e.g. ``{"temperature": 1e-4}``), "bfloat16" (:func:`check_bfloat16`) and
    "permutation" (:func:`check_permutation_invariance`), each with its default tolerances; leave some
    out with ``skip`` (e.g. ``skip=("permutation",)`` for a loss that groups rows by position). Returns
    the names of the checks that ran.
    """
    unknown = set(skip) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks in skip: {sorted(unknown)}; the checks are {CHECKS}")
    runs = {
        "devices": lambda: check_devices(loss_fn, args, num_diff, static, **hparams),
        "gradient": lambda: check_gradient(loss_fn, reference_fn, args, num_diff, static=static, **hparams),
        "large_logits": lambda: check_finite_at_large_logits(
            loss_fn, args, num_diff, static=static, **{**hparams, **(large_logit_hparams or {})}
        ),
        "bfloat16": lambda: check_bfloat16(loss_fn, args, num_diff, static=static, **hparams),
        "permutation": lambda: check_permutation_invariance(
            loss_fn, args, num_diff, seed=seed, static=static, **hparams
        ),
    }
    ran, failures = [], []
    for name, run in runs.items():
        if name in skip or (name == "gradient" and reference_fn is None):
            continue
        ran.append(name)
        try:
            run()
        except AssertionError as e:
            failures.append(f"[{name}] {e}")
    if failures:
        raise AssertionError(f"check_loss: {len(failures)} of {len(ran)} checks failed\n" + "\n".join(failures))
    return tuple(ran)
