"""Input checks, label handling and data splits shared by the evaluation functions.

The evaluations take features as (device or host) arrays and labels as small integer vectors. Checks
run on the host before anything is compiled, so a bad call fails with a message naming the offending
argument instead of an XLA shape error deep inside a jitted program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def as_features(name: str, x) -> jax.Array:
    """Returns `x` as a finite float32 [N, D] array with N, D >= 1, or raises ValueError naming `name`.

    Non-finite features (e.g. from a diverged run) are refused: every metric would silently turn
    them into a meaningless number.
    """
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be a rank-2 [num_examples, dim] array, got shape {x.shape}.")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"`{name}` must be non-empty, got shape {x.shape}.")
    if not (jnp.issubdtype(x.dtype, jnp.number) or jnp.issubdtype(x.dtype, jnp.bool_)):
        raise ValueError(f"`{name}` must be numeric, got dtype {x.dtype}.")
    # Evaluations accumulate over thousands of rows: do it in float32 even for bfloat16 features.
    x = jnp.asarray(x, dtype=jnp.float32)
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return x


def as_host_features(name: str, x, block_rows: int = 65536) -> np.ndarray:
    """`as_features` for features kept in host memory: a float32 NumPy [N, D] array (no copy when `x` already
    is one), checked for NaN and infinities one block of rows at a time, so the check never holds more than
    a block's worth of temporaries beside the features (an ImageNet train split is ~10 GB of them)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be a rank-2 [num_examples, dim] array, got shape {x.shape}.")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"`{name}` must be non-empty, got shape {x.shape}.")
    if x.dtype.kind not in "biuf" and x.dtype.name != "bfloat16":
        raise ValueError(f"`{name}` must be numeric, got dtype {x.dtype}.")
    x = x.astype(np.float32, copy=False)
    for start in range(0, x.shape[0], block_rows):
        if not np.isfinite(x[start:start + block_rows]).all():
            raise ValueError(f"`{name}` contains NaN or infinite values.")
    return x


def as_labels(name: str, y, num_rows: int, rows_name: str) -> np.ndarray:
    """Returns `y` as an int32 host vector of length `num_rows`, or raises ValueError naming `name`."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"`{name}` must be a rank-1 vector of integer labels, got shape {y.shape}.")
    if y.shape[0] != num_rows:
        raise ValueError(
            f"`{name}` has {y.shape[0]} labels but `{rows_name}` has {num_rows} rows; they must match."
        )
    if y.dtype.kind not in "iub":
        if y.dtype.kind != "f" or not np.all(np.mod(y, 1) == 0):
            raise ValueError(f"`{name}` must hold integer class labels, got dtype {y.dtype}.")
    if y.size and y.min() < 0:
        raise ValueError(f"`{name}` must hold non-negative class labels, got min {y.min()}.")
    return y.astype(np.int32)


def resolve_num_classes(num_classes: int | None, **labels: np.ndarray) -> int:
    """`num_classes`, or 1 + the largest label when None; raises ValueError on out-of-range labels."""
    largest = max(int(y.max()) for y in labels.values() if y.size)
    if num_classes is None:
        return largest + 1
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be positive, got {num_classes}.")
    for name, y in labels.items():
        if y.size and int(y.max()) >= num_classes:
            raise ValueError(f"`{name}` has label {int(y.max())} >= `num_classes`={num_classes}.")
    return int(num_classes)


def check_same_dim(a_name: str, a: jax.Array, b_name: str, b: jax.Array) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"`{a_name}` has dimension {a.shape[1]} but `{b_name}` has {b.shape[1]}; they must match."
        )


def classification_inputs(train_x, train_y, test_x, test_y, num_classes, *, on_host: bool = False):
    """Checks and converts the (train, test) features and labels of a classification evaluation.

    Returns (train_x, train_y, test_x, test_y, num_classes) with float32 features, int32 host labels. The
    features are device arrays, or host NumPy arrays with `on_host=True` (the paths that stream them).
    """
    convert = as_host_features if on_host else as_features
    train_x = convert("train_x", train_x)
    test_x = convert("test_x", test_x)
    check_same_dim("train_x", train_x, "test_x", test_x)
    train_y = as_labels("train_y", train_y, train_x.shape[0], "train_x")
    test_y = as_labels("test_y", test_y, test_x.shape[0], "test_x")
    num_classes = resolve_num_classes(num_classes, train_y=train_y, test_y=test_y)
    return train_x, train_y, test_x, test_y, num_classes


def probe_grid_and_holdout(l2_grid, train_y: np.ndarray, holdout_fraction: float, seed: int):
    """Checks the l2 grid; returns it (float32) and the 0/1 float held-out mask (all 0 for one value)."""
    grid = np.asarray(l2_grid, dtype=np.float32).reshape(-1)
    if grid.size == 0 or not np.all(grid > 0):
        raise ValueError(f"`l2_grid` must be a non-empty sequence of positive numbers, got {l2_grid}.")
    if grid.size > 1:
        holdout = stratified_holdout_mask(train_y, holdout_fraction, seed)
    else:
        holdout = np.zeros(train_y.shape, dtype=bool)
    return grid, holdout.astype(np.float32)


def best_on_holdout(hold_acc: jax.Array, hold_loss: jax.Array) -> jax.Array:
    """Index of the highest held-out accuracy; among ties, of the lowest held-out loss.

    Ties are common with a few hundred held-out points; the loss still tells the candidates apart.
    """
    return jnp.argmin(jnp.where(hold_acc == jnp.max(hold_acc), hold_loss, jnp.inf))


def stratified_holdout_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask marking about `fraction` of every class as held out (True).

    Stratifying keeps the class mix of the held-out part equal to that of train, so hyper-parameter
    selection on a few hundred points is not thrown off by a class that happens to be missing. A class
    with a single example stays entirely in the fitting part.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"`holdout_fraction` must be in (0, 1), got {fraction}.")
    rng = np.random.default_rng(seed)
    mask = np.zeros(labels.shape[0], dtype=bool)
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_hold = min(max(1, round(fraction * members.size)), members.size - 1)
        mask[members[:n_hold]] = True
    if not mask.any():
        raise ValueError("The training set is too small to hold out any example for choosing `l2`.")
    return mask


def weighted_standardization(x: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-feature mean and standard deviation of the rows of `x` with weight 1 (weights are 0/1).

    Zero-variance features get scale 1 (as scikit-learn's StandardScaler does): dividing by a tiny
    std would blow rounding noise up into a feature.
    """
    # Elementwise products and sums, not `weights @ x`: XLA:CPU in jax 0.10 miscompiles a dot whose
    # operand is a broadcast (e.g. `jnp.ones(n) @ x` inside jit) when it is fused with a reduction.
    column = weights[:, None]
    total = jnp.sum(weights)
    mean = jnp.sum(column * x, axis=0) / total
    var = jnp.sum(column * jnp.square(x - mean), axis=0) / total
    std = jnp.sqrt(var)
    return mean, jnp.where(std > 1e-6 * (1.0 + jnp.abs(mean)), std, 1.0)


def accuracy(pred: jax.Array, labels) -> float:
    """Fraction of `pred` equal to `labels`, as a Python float.

    Counts in integers and divides on the host: a float32 mean of 899 ones is 0.99999994, not 1.
    """
    labels = np.asarray(labels)
    return int(jnp.sum(pred == jnp.asarray(labels))) / labels.size


def counts_to_accuracies(out: dict, num_train: int, num_test: int, num_holdout: int) -> dict:
    """Fetches a probe program's outputs and turns its integer '*_correct' counts into accuracies.

    'test_correct' -> 'accuracy', 'train_correct' -> 'train_accuracy', 'holdout_correct' ->
    'holdout_accuracy', 'grid_holdout_correct' -> 'grid_holdout_accuracy' (a tuple); 'iterations'
    stays an int and everything else becomes a float.
    """
    totals = {"test": num_test, "train": num_train, "holdout": num_holdout, "grid_holdout": num_holdout}
    result = {}
    for key, value in jax.device_get(out).items():
        value = np.asarray(value)
        if key.endswith("_correct"):
            split = key[: -len("_correct")]
            name = "accuracy" if split == "test" else f"{split}_accuracy"
            fractions = value.astype(np.int64) / totals[split]
            result[name] = tuple(float(f) for f in fractions) if value.ndim else float(fractions)
        elif value.dtype.kind in "iu":
            result[key] = int(value)
        else:
            result[key] = float(value)
    return result


BLOCK_ROWS = 65536  # rows of host features per device block in the blockwise probes


def row_blocks(block_rows: int, *arrays: np.ndarray):
    """(valid, *blocks) for consecutive row blocks of the host arrays (same length): each block padded with
    zero rows to `block_rows` (one compiled shape for all), `valid` a [block_rows] float32 0/1 mask."""
    n = arrays[0].shape[0]
    for start in range(0, n, block_rows):
        count = min(block_rows, n - start)
        valid = np.zeros(block_rows, np.float32)
        valid[:count] = 1.0
        blocks = []
        for a in arrays:
            block = np.zeros((block_rows, *a.shape[1:]), a.dtype)
            block[:count] = a[start:start + count]
            blocks.append(block)
        yield valid, *blocks
