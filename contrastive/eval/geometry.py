"""Geometry of a representation on the unit hypersphere: alignment, uniformity, tolerance, histograms.

Wang & Isola 2020 ("Understanding Contrastive Representation Learning through Alignment and Uniformity
on the Hypersphere") split the contrastive loss into two measurable properties of f(x) = x / ||x||:

    alignment(alpha)  = E_{(x, y) positive} ||f(x) - f(y)||^alpha                        (lower: closer pairs)
    uniformity(t)     = log E_{x != y} exp(-t ||f(x) - f(y)||^2)                         (lower: more uniform)

and Wang & Liu 2021 ("Understanding the Behaviour of Contrastive Loss") add the tolerance to
semantically similar samples, the mean similarity of same-class pairs,

    tolerance = E_{i != j, y_i = y_j} f(x_i) . f(x_j)                                    (higher: classes kept together)

All inputs are normalised inside. Uniformity runs over rows in chunks, so memory is O(batch_size * N).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from contrastive.eval import _common
from contrastive.losses.core import l2_normalize


@functools.partial(jax.jit, static_argnames=("alpha",))
def _alignment(x, y, *, alpha):
    dist = jnp.linalg.norm(l2_normalize(x) - l2_normalize(y), axis=-1)
    return jnp.mean(dist**alpha)


def alignment(x, y, *, alpha: float = 2.0) -> float:
    """Mean ||f(x_i) - f(y_i)||^alpha over the positive pairs (x_i, y_i) (Wang & Isola 2020).

    Args:
      x, y: [N, D] embeddings of the two sides of N positive pairs. alpha: exponent > 0 (paper: 2).
    """
    x, y = _common.as_features("x", x), _common.as_features("y", y)
    if x.shape != y.shape:
        raise ValueError(
            f"`x` {x.shape} and `y` {y.shape} must have the same shape (row i pairs with row i)."
        )
    if not alpha > 0:
        raise ValueError(f"`alpha` must be positive, got {alpha}.")
    return float(_alignment(x, y, alpha=float(alpha)))


@functools.partial(jax.jit, static_argnames=("batch_size",))
def _uniformity(x, t, *, batch_size):
    f = l2_normalize(x)
    n = f.shape[0]

    def row_logsumexp(args):
        row, i = args
        # ||a - b||^2 = 2 - 2 a.b on the sphere; clamp the round-off below 0.
        sq_dist = jnp.maximum(2.0 - 2.0 * (f @ row), 0.0)
        return jax.nn.logsumexp(jnp.where(jnp.arange(n) == i, -jnp.inf, -t * sq_dist))

    per_row = jax.lax.map(row_logsumexp, (f, jnp.arange(n)), batch_size=min(batch_size, n))
    # Averaging over ordered pairs i != j equals averaging over unordered distinct pairs.
    return jax.nn.logsumexp(per_row) - jnp.log(n * (n - 1.0))


def uniformity(x, *, t: float = 2.0, batch_size: int = 1024) -> float:
    """log of the mean over distinct pairs of exp(-t ||f(x_i) - f(x_j)||^2) (Wang & Isola 2020).

    Computed with log-sum-exp, so it stays finite for large t. Args: x: [N, D], N >= 2; t > 0 (paper: 2).
    """
    x = _common.as_features("x", x)
    if x.shape[0] < 2:
        raise ValueError(f"`x` needs at least 2 rows to form a pair, got {x.shape[0]}.")
    if not t > 0:
        raise ValueError(f"`t` must be positive, got {t}.")
    return float(_uniformity(x, jnp.float32(t), batch_size=int(batch_size)))


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _tolerance(x, labels, *, num_classes):
    f = l2_normalize(x)
    # sum_{i != j in class c} f_i . f_j = ||sum_{i in c} f_i||^2 - n_c (each f_i . f_i = 1): O(N D)
    # instead of materialising the N x N similarity matrix.
    sums = jax.ops.segment_sum(f, labels, num_segments=num_classes)
    counts = jax.ops.segment_sum(jnp.ones(labels.shape[0]), labels, num_segments=num_classes)
    self_sims = jax.ops.segment_sum(jnp.sum(f * f, axis=-1), labels, num_segments=num_classes)
    pair_sum = jnp.sum(jnp.sum(sums * sums, axis=-1) - self_sims)
    return pair_sum / jnp.sum(counts * (counts - 1.0))


def tolerance(x, labels, *, num_classes: int | None = None) -> float:
    """Mean cosine similarity f(x_i) . f(x_j) over distinct same-class pairs (Wang & Liu 2021).

    Args:
      x: [N, D] embeddings; labels: [N] integer labels (some class needs at least 2 members).
    """
    x = _common.as_features("x", x)
    labels = _common.as_labels("labels", labels, x.shape[0], "x")
    num_classes = _common.resolve_num_classes(num_classes, labels=labels)
    if np.max(np.bincount(labels)) < 2:
        raise ValueError("`labels` has no class with two members: tolerance needs a same-class pair.")
    return float(_tolerance(x, labels, num_classes=num_classes))


@jax.jit
def positive_negative_similarities(x, y):
    """Cosine similarities of the N positive pairs (x_i, y_i) [N] and of the N (N - 1) others.

    Materialises the N x N similarity matrix: meant for plotting a batch or a test set, not millions.
    """
    sims = l2_normalize(x.astype(jnp.float32)) @ l2_normalize(y.astype(jnp.float32)).T
    n = sims.shape[0]
    # Dropping the first entry and cutting rows of n + 1 puts every diagonal entry in a last column:
    # a static-shape way to take the off-diagonal entries (boolean masks do not jit).
    off_diagonal = sims.reshape(-1)[1:].reshape(n - 1, n + 1)[:, :-1].reshape(-1)
    return jnp.diagonal(sims), off_diagonal


def similarity_histograms(pos_sims, neg_sims, path, *, bins: int = 50, title: str | None = None) -> str:
    """Writes overlaid density histograms of positive and negative similarities as a PNG at `path`.

    Returns the path written. matplotlib is imported here (it is only needed for plots) and drawn on
    an Agg canvas without pyplot, so no global backend or figure state is touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pos = np.asarray(jax.device_get(pos_sims), np.float64).reshape(-1)
    neg = np.asarray(jax.device_get(neg_sims), np.float64).reshape(-1)
    for name, values in (("pos_sims", pos), ("neg_sims", neg)):
        if values.size == 0 or not np.all(np.isfinite(values)):
            raise ValueError(f"`{name}` must be a non-empty array of finite similarities.")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig = Figure(figsize=(5, 3.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lo, hi = min(pos.min(), neg.min()), max(pos.max(), neg.max())
    if hi - lo < 1e-6:  # all similarities equal (e.g. a collapsed encoder): give the bins a width
        lo, hi = lo - 0.05, hi + 0.05
    edges = np.linspace(lo, hi, bins + 1)
    ax.hist(neg, bins=edges, density=True, alpha=0.6, label=f"negative pairs (n={neg.size})")
    ax.hist(pos, bins=edges, density=True, alpha=0.6, label=f"positive pairs (n={pos.size})")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(title or "similarity of positive and negative pairs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path
