"""The softmax engine: the terms, the per-row totals and the finalize step of every softmax-family loss.

Every softmax-family loss in this package (NT-Xent, CLIP/ALIGN, DCL/DCLW, InfoLOOB, SupCon, MoCo and
their margin / debiasing / hardness variants) is this one computation on the similarities ``s`` of the
local anchors (rows) against the global candidates (columns), with

* a positive mask ``P(i)`` and a negative mask ``N(i)`` (self-pairs are in neither),
* a logit scale ``c`` (``1 / temperature`` or CLIP's ``logit_scale``; a scalar, one per row or per pair),
* whether the positives enter the denominator (InfoNCE: yes; DCL / InfoLOOB: no),
* :class:`Variants` that reshape the positive logit or the negative mass.

The per-anchor loss is (Khosla et al. 2020, L_out, which is InfoNCE for ``|P(i)| = 1``)::

    l_ij  = c_ij * s_ij                       (positives: c_ij * margin(s_ij))
    L_i   = log D_i - (1/|P(i)|) sum_{p in P(i)} l_ip
    D_i   = sum_{p in P(i)} exp(l_ip) + M_i   (or just M_i when positives are left out)
    M_i   = sum_{k in N(i)} exp(l_ik)         (the negative mass; Variants change it)

Written once, in two steps: :func:`softmax_terms` turns a block of similarities into per-pair terms
whose row totals are log-sum-exps or sums (``contrastive.parallel.tiled``), and :func:`finalize_rows`
turns the row totals into ``L_i``. The dense path applies them to one whole block; the ring and tiled
paths (``losses.streamed``) combine the totals of many tiles first. All of it is float32 with masked
log-sum-exp (never ``exp`` then ``log``), so logits of 1e4 give finite values and gradients. Anchors
without any positive contribute zero.

Distributed layout: the rows are this device's anchors, the columns the global batch (gathered with
``jax.lax.all_gather(..., tiled=True)``, never stop-gradient'ed: its transpose sums the key gradients
back to their owners, or passed around a ring); the reduction is ``psum(local sum) / global count`` so
every device returns the global-batch loss.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from contrastive.parallel.tiled import LSE, MAX, SUM, reduce_terms

Array = jax.Array

_EXP_ONE_EPS = 1e-6  # keeps log1p(-exp(d)) and arccos away from their infinite-slope points


# ----------------------------------------------------------------------------------------- validation
def check_positive(name: str, value) -> None:
    """Raise ValueError if a concrete ``value`` is not > 0 (traced values are checked by the caller)."""
    try:
        concrete = np.asarray(value, dtype=np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError, TypeError):
        return  # learnable / traced: cannot be checked at trace time
    if not np.all(np.isfinite(concrete)) or np.any(concrete <= 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")


def check_rank(name: str, x, ndim: int) -> None:
    """Raise ValueError unless ``x`` has rank ``ndim`` and a floating dtype."""
    shape = jnp.shape(x)
    if len(shape) != ndim:
        raise ValueError(f"{name} must have rank {ndim}, got shape {shape}")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(f"{name} must be a floating-point array, got dtype {jnp.result_type(x)}")


def check_same_shape(name_a: str, a, name_b: str, b) -> None:
    """Raise ValueError if two embedding arrays differ in shape."""
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {jnp.shape(a)} and {jnp.shape(b)}"
        )


# ----------------------------------------------------------------------------------------- collectives
def gather_rows(x: Array, axis_name: str | None) -> Array:
    """The global batch of ``x`` (rows concatenated in device order); ``x`` itself on one device."""
    if axis_name is None:
        return x
    return jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def row_offset(num_local: int, axis_name: str | None) -> Array | int:
    """Global index of this device's first row."""
    if axis_name is None:
        return 0
    return jax.lax.axis_index(axis_name) * num_local


def num_devices(axis_name: str | None) -> int:
    return 1 if axis_name is None else jax.lax.axis_size(axis_name)


def global_sum(x: Array, axis_name: str | None) -> Array:
    """Sum over devices; the result is the same (replicated) value on every device."""
    return x if axis_name is None else jax.lax.psum(x, axis_name)


# ----------------------------------------------------------------------------------------- similarity
def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """Unit-norm rows ``x / max(|x|, eps)``, computed in float32 (cosine similarity of bfloat16 embeddings
    is not bf16). Written as ``x * rsqrt(max(|x|^2, eps^2))`` so that a zero row has a finite gradient
    (``sqrt`` at 0 has an infinite one)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def similarity(queries: Array, keys: Array) -> Array:
    """``queries @ keys.T`` in float32."""
    return jnp.matmul(queries.astype(jnp.float32), keys.astype(jnp.float32).T)


# ----------------------------------------------------------------------------------------- variants
@dataclasses.dataclass(frozen=True)
class Variants:
    """Options that change the positive logit or the negative mass of :func:`softmax_xent_rows`.

    All default to "off"; with defaults the loss is plain InfoNCE.

    additive_margin: ``m`` subtracted from the positive similarity, ``s_ip - m`` (AM-Softmax /
        CosFace; "AM" NT-Xent).
    angular_margin: ``m`` added to the positive angle, ``cos(min(arccos s_ip + m, pi))`` (ArcFace;
        "AAM" NT-Xent). Assumes unit-norm embeddings.
    false_negative_prior: class prior ``tau+`` of Chuang et al. 2020 (Debiased Contrastive Learning):
        ``M_i <- max((M_i - tau+ * |N(i)| * mean_p exp(l_ip)) / (1 - tau+), |N(i)| * exp(c * s_min))``.
    hardness_concentration: ``beta`` of Robinson et al. 2021 (Contrastive Learning with Hard Negative
        Samples): ``M_i <- |N(i)| * sum_k softmax_k(beta * l_ik) * exp(l_ik)``; as in the authors'
        code the importance weights are not stop-gradient'ed.
    hardness_weight: ``alpha`` of LLaVE (Lan et al. 2025): each negative is weighted by
        ``exp(alpha * sg(s_ik))``, a stop-gradient copy of its similarity.
    hardest_negatives: ``k``; keep only the k largest negative logits in ``M_i`` (Wang & Liu 2021,
        "hard contrastive loss"). Applied after the LLaVE weights and before the other estimators.
    """

    additive_margin: float = 0.0
    angular_margin: float = 0.0
    false_negative_prior: float = 0.0
    hardness_concentration: float = 0.0
    hardness_weight: float = 0.0
    hardest_negatives: int | None = None

    def __post_init__(self):
        for name in ("additive_margin", "angular_margin", "hardness_concentration", "hardness_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite Python number, got {value!r}")
        if self.angular_margin < 0 or self.angular_margin >= math.pi:
            raise ValueError(f"angular_margin must be in [0, pi), got {self.angular_margin!r}")
        if self.hardness_concentration < 0:
            raise ValueError(
                f"hardness_concentration must be >= 0, got {self.hardness_concentration!r}"
            )
        prior = self.false_negative_prior
        if not isinstance(prior, (int, float)) or not 0.0 <= prior < 1.0:
            raise ValueError(f"false_negative_prior must be in [0, 1), got {prior!r}")
        k = self.hardest_negatives
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"hardest_negatives must be None or a positive int, got {k!r}")


PLAIN = Variants()


def margin_similarity(sim: Array, variants: Variants) -> Array:
    """The positive-pair similarity after the additive and angular margins."""
    if variants.angular_margin:
        theta = jnp.arccos(jnp.clip(sim, -1.0 + _EXP_ONE_EPS, 1.0 - _EXP_ONE_EPS))
        # Clamping the angle at pi keeps cos monotone: a larger angle never gives a larger logit.
        sim = jnp.cos(jnp.minimum(theta + variants.angular_margin, jnp.pi))
    return sim - variants.additive_margin


def _log_debiased_mass(log_mass, log_pos_mass, log_floor, prior):
    """``log max((exp(a) - exp(b)) / (1 - prior), exp(floor))`` without leaving log space."""
    delta = log_pos_mass - log_mass
    ok = delta < -_EXP_ONE_EPS
    # The double where keeps the unused branch's gradient finite (log1p(-1) has an infinite slope).
    safe_delta = jnp.where(ok, delta, -1.0)
    log_diff = log_mass + jnp.log1p(-jnp.exp(safe_delta)) - math.log1p(-prior)
    return jnp.maximum(jnp.where(ok, log_diff, -jnp.inf), log_floor)


# ----------------------------------------------------------------------------------------- the engine
def softmax_terms(sim, scale, positive_mask, negative_mask, *, variants: Variants = PLAIN, min_similarity=-1.0):
    """The row terms of :func:`softmax_xent_rows` on a block (``contrastive.parallel.tiled`` format).

    ``scale`` broadcasts against ``sim`` (a scalar, [rows, 1], [1, cols] or [rows, cols]). Each term is a
    log-sum-exp or a sum over the row, so any block of columns gives partial totals that combine
    exactly; only ``hardest_negatives`` (a top-k of the row) needs the block to hold whole rows.
    """
    logits = sim * scale
    pos_logits = margin_similarity(sim, variants) * scale
    weighted = logits
    if variants.hardness_weight:
        weighted = logits + variants.hardness_weight * jax.lax.stop_gradient(sim)
    floor = jnp.broadcast_to(min_similarity * scale, sim.shape)
    neg = negative_mask
    if variants.hardest_negatives is not None:
        # Only the k hardest columns enter the negative terms; top_k's gradient flows to those alone.
        k = min(variants.hardest_negatives, sim.shape[-1])
        _, idx = jax.lax.top_k(jnp.where(neg, jax.lax.stop_gradient(weighted), -jnp.inf), k)
        pick = lambda a: jnp.take_along_axis(jnp.broadcast_to(a, sim.shape), idx, axis=-1)
        weighted, logits, floor, neg = map(pick, (weighted, logits, floor, neg))
    lse = {"pos": (pos_logits, positive_mask), "neg": (weighted, neg)}
    if variants.hardness_concentration:
        beta = variants.hardness_concentration
        lse |= {"concentrated": (weighted + beta * logits, neg), "beta": (beta * logits, neg)}
    if variants.false_negative_prior:
        lse["floor"] = (floor, neg)
    sums = {
        "pos_logit": (pos_logits, positive_mask),
        "num_pos": (jnp.ones(sim.shape), positive_mask),
        "num_neg": (jnp.ones(neg.shape), neg),
    }
    return {LSE: lse, SUM: sums}


def finalize_rows(totals, positive_weight=None, *, positives_in_denominator: bool = True, variants=PLAIN):
    """Per-anchor ``L_i`` and ``log D_i`` (module docstring) from the row totals of :func:`softmax_terms`.

    Returns ``{"loss": L_i, "log_denominator": log D_i}``, float32 [rows]; both are 0 for anchors without
    a positive. ``positive_weight`` [rows] scales the positive term (DCLW), or None.
    """
    lse, sums = totals[LSE], totals[SUM]
    has_pos = sums["num_pos"] > 0
    safe_num_pos = jnp.maximum(sums["num_pos"], 1.0)
    mean_pos_logit = sums["pos_logit"] / safe_num_pos
    log_pos_mass = lse["pos"]
    log_mean_pos = jnp.where(has_pos, log_pos_mass, 0.0) - jnp.log(safe_num_pos)
    log_count = jnp.log(jnp.maximum(sums["num_neg"], 1.0))
    log_mass = lse["neg"]
    if variants.hardness_concentration:
        log_mass = log_count + lse["concentrated"] - lse["beta"]
    if variants.false_negative_prior:
        prior = variants.false_negative_prior
        log_prior_mass = math.log(prior) + log_count + log_mean_pos
        log_mass = _log_debiased_mass(log_mass, log_prior_mass, lse["floor"], prior)
    log_denominator = jnp.logaddexp(log_pos_mass, log_mass) if positives_in_denominator else log_mass
    if positive_weight is not None:
        mean_pos_logit = positive_weight * mean_pos_logit
    return {
        "loss": jnp.where(has_pos, log_denominator - mean_pos_logit, 0.0),
        "log_denominator": jnp.where(has_pos, log_denominator, 0.0),
    }


def softmax_xent_rows(
    sim: Array,
    positive_mask: Array,
    negative_mask: Array,
    *,
    scale,
    positives_in_denominator: bool = True,
    variants: Variants = PLAIN,
    min_similarity: float = -1.0,
    positive_weight: Array | None = None,
) -> Array:
    """Per-anchor softmax cross-entropy ``L_i`` (see the module docstring) of a dense similarity block.

    :func:`softmax_terms` on the whole block, reduced per row, then :func:`finalize_rows`: the same code
    the losses stream over tiles. For blocks given as masks (e.g. ``moco``'s queue).

    Args:
      sim: [rows, cols] similarities (cosine or dot products) of local anchors to global candidates.
      positive_mask, negative_mask: boolean [rows, cols]; disjoint, self-pairs in neither.
      scale: logit scale ``c`` (1 / temperature), a scalar or an array broadcastable to ``sim``
        (per-row or per-pair temperatures).
      positives_in_denominator: False for the leave-positive-out losses (DCL, InfoLOOB).
      variants: margin / debiasing / hardness options.
      min_similarity: smallest possible similarity (-1 for cosine); sets the debiasing floor.
      positive_weight: optional [rows] weight ``w_i`` of the positive term,
        ``L_i = log D_i - w_i * mean_p l_ip`` (DCLW); pass it stop-gradient'ed if it is a constant.

    Returns:
      float32 [rows] per-anchor losses; zero for anchors without a positive.
    """
    terms = softmax_terms(
        sim.astype(jnp.float32), jnp.asarray(scale, jnp.float32), positive_mask, negative_mask,
        variants=variants, min_similarity=min_similarity,
    )
    totals = reduce_terms(terms)
    return finalize_rows(totals, positive_weight, positives_in_denominator=positives_in_denominator, variants=variants)[
        "loss"
    ]


# ----------------------------------------------------------------------------------------- metrics
def pair_metric_terms(sim, positive_mask, negative_mask):
    """Metric terms of one block: the sums and maxima behind :func:`pair_metrics`."""
    sim, ones = jax.lax.stop_gradient(sim), jnp.ones_like(sim)
    pos, neg = positive_mask, negative_mask
    return {
        SUM: {"pos": (sim, pos), "num_pos": (ones, pos), "neg": (sim, neg), "num_neg": (ones, neg)},
        MAX: {"best_pos": (sim, pos), "best_neg": (sim, neg)},
    }


def pair_metrics(metric_totals, axis_name: str | None) -> dict[str, Array]:
    """Global mean positive / negative similarity and in-batch top-1 retrieval accuracy.

    From the row totals of :func:`pair_metric_terms`: ``top1_acc`` is the fraction of anchors (with at
    least one positive) whose best positive beats their best negative. Sums are psum'd, so every device
    reports the global values.
    """
    sums, best = metric_totals[SUM], metric_totals[MAX]
    has_pos = sums["num_pos"] > 0
    hits = jnp.sum(has_pos & (best["best_pos"] > best["best_neg"]), dtype=jnp.float32)
    totals = {name: jnp.sum(v) for name, v in sums.items()}
    totals = global_sum(totals | {"hits": hits, "anchors": jnp.sum(has_pos, dtype=jnp.float32)}, axis_name)
    ratio = lambda a, b: totals[a] / jnp.maximum(totals[b], 1.0)
    return {
        "pos_sim": ratio("pos", "num_pos"),
        "neg_sim": ratio("neg", "num_neg"),
        "top1_acc": ratio("hits", "anchors"),
    }


def global_mean(per_anchor: Array, axis_name: str | None) -> Array:
    """Mean over the anchors of the global batch (every device holds the same number of anchors)."""
    total = global_sum(jnp.sum(per_anchor), axis_name)
    return total / (per_anchor.shape[0] * num_devices(axis_name))
