"""MoCo v2 InfoNCE with a key queue, plus MoCHi hard-negative mixing and FT feature transformation.

Papers: He, Fan, Wu, Xie, Girshick. "Momentum Contrast for Unsupervised Visual Representation Learning"
(MoCo), CVPR 2020, eq. (1) and Algorithm 1; Chen, Fan, Girshick, He. "Improved Baselines with Momentum
Contrastive Learning" (MoCo v2), arXiv 2003.04297 (same loss, MLP head, tau = 0.2).

Queries q_i (online encoder, view 1) and keys k_i (momentum encoder, view 2; no gradient) are
L2-normalised here (cosine); the queue rows n (past keys, replicated on every device) are too. For each
query i of the GLOBAL batch of N pairs::

    l_i = -log( exp(q_i.k_i / T) / (exp(q_i.k_i / T) + sum_{n in Neg(i)} exp(q_i.n / T)) )
    L   = (1 / N) sum_i l_i                               (mean over the global batch)

``Neg(i)`` is the queue, plus the other keys k_j (j != i) of the global batch when
``in_batch_negatives`` (gathered with ``all_gather``; they are the keys the caller enqueues next).
The per-query loss is ``core.softmax_xent_rows`` with the positive in column 0.

Options, applied in this order (each is off by default; the random ones need ``key``):

1. Feature Transformation (Zhu, Zhao, Liu, Sun, Chen. "Improving Contrastive Learning by Visualizing
   Feature Transformation", ICCV 2021), positive extrapolation, ``ft_extrapolation_alpha = a > 0``::

       lam ~ 1 + Beta(a, a), drawn PER DIMENSION and per query (a [N, D] array, lam in [1, 2])
       q' = normalize(lam * q + (1 - lam) * k),   k' = normalize(lam * k + (1 - lam) * q)

   This is the per-dimension variant (one lam per query and dimension).
   The authors' code (github.com/DTennant/CL-Visualizing-Feature-Transformation, memory/mem_moco.py)
   offers both: ``dim_mask`` picks per-element draws, and their released run.sh uses the default,
   one scalar lam per step for the whole batch, with no re-normalisation. Here the pair is always
   re-normalised so that the logits stay cosines. Before re-normalising, ``q' + k' = q + k`` and
   ``q' - k' = (2 lam - 1)(q - k)``, with 2 lam - 1 in [1, 3]: a harder positive. As in the authors'
   code, the gradient reaches q through q' and through the ``(1 - lam) q`` term of k'; k itself
   stays stop-gradient.
2. FT negative interpolation, ``ft_interpolation_alpha = a > 0``: with one Beta(a, a) draw ``m_r`` per
   queue ROW and one random permutation ``p`` of the queue (the same key on every device, so every
   device sees the same transformed queue)::

       n'_r = normalize(m_r * n_r + (1 - m_r) * n_p(r))

   One m per queue row, re-normalised (the paper only says m ~ Beta(a, a); the authors' code draws
   per element with ``dim_mask``, and their run.sh one scalar m for the whole queue without
   re-normalising). The transformed queue replaces the queue in the loss, and MoCHi below mixes
   from it. Nothing is enqueued here.
3. MoCHi (Kalantidis, Sariyildiz, Pion, Weinzaepfel, Larlus. "Hard Negative Mixing for Contrastive
   Learning", NeurIPS 2020, Sec. 4), ``mochi_hardest = N_h > 0``: per query, rank the queue by q.n and
   keep the N_h hardest, Q~. Synthesise ``mochi_mix = s`` points from two distinct members of Q~ and
   ``mochi_query_mix = s'`` points from the query and one member of Q~::

       h_t  = normalize(a_t * n_i + (1 - a_t) * n_j),   n_i != n_j in Q~,  a_t ~ U(0, 1)
       h'_t = normalize(b_t * q + (1 - b_t) * n_j),     n_j in Q~,         b_t ~ U(0, 0.5)

   and append their logits q.h / T to the denominator of that query only. The paper draws n_i, n_j
   at random from Q~; here they are drawn distinct, so h is never a copy of a queue row (hence
   N_h >= 2 when s > 0). The points are stop-gradient (including the q inside h'); the logits
   q.sg(h) still depend on q, exactly like the queue's. Only the queue is ranked, never the in-batch
   keys (as in the paper, whose pool is the MoCo queue).

Randomness is per query from ``fold_in(subkey, global_row_index)`` (one subkey per option), so the
loss does not depend on how the batch is sharded: 8 devices give the 1-device numbers.

Distributed layout: the rows are this device's queries; in-batch keys come from a tiled all_gather
(stop-gradient: keys never get gradient); the loss is ``psum(local sum) / N`` on every device.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from contrastive.losses.core import (
    check_positive,
    check_rank,
    check_same_shape,
    gather_rows,
    global_mean,
    global_sum,
    l2_normalize,
    num_devices,
    row_offset,
    similarity,
    softmax_xent_rows,
)

Array = jax.Array


class MocoSimilarities(NamedTuple):
    """Cosine similarities of this device's queries to every candidate, and the features behind them.

    Columns of ``sim``: ``[positive | in-batch keys (B, if enabled) | queue (K) | synthetic (S)]``;
    column 0 is the positive, ``negative_mask`` selects the negatives (the in-batch self column is out).
    """

    sim: Array  # [b, 1 + B + K + S] float32
    negative_mask: Array  # [b, 1 + B + K + S] bool
    query: Array  # [b, D] q (FT-extrapolated when enabled), unit norm; carries the gradient
    positive_key: Array  # [b, D] k (or k'), unit norm
    queue: Array  # [K, D] the queue (FT-interpolated when enabled), unit norm, constant
    synthetic: Array  # [b, S, D] MoCHi points (h then h'), unit norm, constant; S = 0 when off
    hardest_sim: Array  # [b, N_h] q.n of the N_h hardest queue rows, descending; N_h = 0 when off

    @property
    def positive_mask(self) -> Array:
        return jnp.broadcast_to(jnp.arange(self.sim.shape[1]) == 0, self.sim.shape)

    @property
    def queue_sim(self) -> Array:
        start = self.sim.shape[1] - self.synthetic.shape[1] - self.queue.shape[0]
        return self.sim[:, start : start + self.queue.shape[0]]

    @property
    def synthetic_sim(self) -> Array:
        return self.sim[:, self.sim.shape[1] - self.synthetic.shape[1] :]


# ----------------------------------------------------------------------------------------- validation
def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative Python int, got {value!r}")
    return value


def _check_alpha(name: str, value) -> float:
    try:
        alpha = float(value)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError, TypeError) as e:
        raise ValueError(f"{name} must be a concrete number (it switches the option on), got {value!r}") from e
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"{name} must be finite and >= 0 (0 turns it off), got {value!r}")
    return alpha


def _check_inputs(q, k, queue, key, hardest, mix, query_mix, extrapolation, interpolation):
    check_rank("q", q, 2)
    check_rank("k", k, 2)
    check_rank("queue", queue, 2)
    check_same_shape("q", q, "k", k)
    if queue.shape[1] != q.shape[1]:
        raise ValueError(f"queue rows must have the embedding size of q, got {queue.shape} and {q.shape}")
    if queue.shape[0] < 1:
        raise ValueError("queue must hold at least one key")
    hardest, mix, query_mix = (
        _check_count(n, v) for n, v in (("mochi_hardest", hardest), ("mochi_mix", mix), ("mochi_query_mix", query_mix))
    )
    extrapolation = _check_alpha("ft_extrapolation_alpha", extrapolation)
    interpolation = _check_alpha("ft_interpolation_alpha", interpolation)
    if hardest and not (mix or query_mix):
        raise ValueError("mochi_hardest > 0 needs mochi_mix > 0 or mochi_query_mix > 0 (nothing to synthesise)")
    if (mix or query_mix) and not hardest:
        raise ValueError("mochi_mix / mochi_query_mix need mochi_hardest > 0 (the pool they mix from)")
    if mix and hardest < 2:
        raise ValueError(f"mochi_mix mixes two distinct hard negatives: mochi_hardest must be >= 2, got {hardest}")
    if hardest > queue.shape[0]:
        raise ValueError(f"mochi_hardest={hardest} exceeds the queue size {queue.shape[0]}")
    if (hardest or extrapolation or interpolation) and key is None:
        raise ValueError("MoCHi and FT options are random: pass key=jax.random.key(...)")
    return hardest, mix, query_mix, extrapolation, interpolation


# ----------------------------------------------------------------------------------------- transforms
def _per_row_keys(key, num_rows: int, axis_name: str | None) -> Array:
    """One key per local row from its GLOBAL index, so draws do not depend on the sharding."""
    rows = row_offset(num_rows, axis_name) + jnp.arange(num_rows)
    return jax.vmap(lambda r: jax.random.fold_in(key, r))(rows)


def _symmetric_beta(key, alpha: float, shape: tuple[int, ...]) -> Array:
    """Beta(alpha, alpha) as G1 / (G1 + G2) from ONE log-gamma call (log space: no 0/0 for small alpha).

    ``jax.random.beta`` makes two gamma calls, each a rejection loop costing seconds of XLA:CPU compile.
    """
    log_g = jax.random.loggamma(key, alpha, (2, *shape))
    return jax.nn.sigmoid(log_g[0] - log_g[1])


def _extrapolate_positives(q, k, key, alpha, axis_name):
    """FT positive extrapolation with a per-dimension lam ~ 1 + Beta(alpha, alpha)."""
    keys = _per_row_keys(key, q.shape[0], axis_name)
    lam = 1.0 + jax.vmap(lambda rk: _symmetric_beta(rk, alpha, (q.shape[1],)))(keys)
    return l2_normalize(lam * q + (1 - lam) * k), l2_normalize(lam * k + (1 - lam) * q)


def _interpolate_queue(queue, key, alpha):
    """FT negative interpolation: n'_r = normalize(m_r n_r + (1 - m_r) n_p(r)), m_r ~ Beta(alpha, alpha)."""
    perm_key, mix_key = jax.random.split(key)
    partner = queue[jax.random.permutation(perm_key, queue.shape[0])]
    m = _symmetric_beta(mix_key, alpha, (queue.shape[0], 1))
    return l2_normalize(m * queue + (1 - m) * partner)


def _mochi_points(row_key, query, hardest, mix: int, query_mix: int) -> Array:
    """The s + s' synthetic negatives of one query from its [N_h, D] hardest queue rows."""
    num_hardest = hardest.shape[0]
    pair_key, shift_key, a_key, partner_key, b_key = jax.random.split(row_key, 5)
    first = jax.random.randint(pair_key, (mix,), 0, num_hardest)
    # A nonzero shift modulo N_h makes the second index differ from the first.
    second = (first + jax.random.randint(shift_key, (mix,), 1, max(num_hardest, 2))) % num_hardest
    a = jax.random.uniform(a_key, (mix, 1))
    mixed = a * hardest[first] + (1 - a) * hardest[second]
    partner = jax.random.randint(partner_key, (query_mix,), 0, num_hardest)
    b = 0.5 * jax.random.uniform(b_key, (query_mix, 1))
    query_mixed = b * query + (1 - b) * hardest[partner]
    return l2_normalize(jnp.concatenate([mixed, query_mixed], axis=0))


# ----------------------------------------------------------------------------------------- similarities
def moco_similarities(
    q: Array,
    k: Array,
    queue: Array,
    *,
    key=None,
    in_batch_negatives: bool = True,
    mochi_hardest: int = 0,
    mochi_mix: int = 0,
    mochi_query_mix: int = 0,
    ft_extrapolation_alpha: float = 0.0,
    ft_interpolation_alpha: float = 0.0,
    axis_name: str | None = None,
) -> MocoSimilarities:
    """Every similarity the MoCo loss uses, after FT and MoCHi (see the module docstring).

    Arguments as in :func:`moco`. The ``sim`` block and masks feed ``core.softmax_xent_rows``; the
    other fields expose the transformed features (for metrics, logging and tests).
    """
    hardest, mix, query_mix, extrapolation, interpolation = _check_inputs(
        q, k, queue, key, mochi_hardest, mochi_mix, mochi_query_mix, ft_extrapolation_alpha, ft_interpolation_alpha
    )
    pos_key, neg_key, mochi_key = jax.random.split(key, 3) if key is not None else (None,) * 3
    b = q.shape[0]
    q = l2_normalize(q)
    k = jax.lax.stop_gradient(l2_normalize(k))
    queue = jax.lax.stop_gradient(l2_normalize(queue))
    batch_keys = gather_rows(k, axis_name)  # raw keys: the ones the caller enqueues next

    positive_key = k
    if extrapolation:
        q, positive_key = _extrapolate_positives(q, k, pos_key, extrapolation, axis_name)
    if interpolation:
        queue = jax.lax.stop_gradient(_interpolate_queue(queue, neg_key, interpolation))

    queue_sim = similarity(q, queue)
    synthetic = jnp.zeros((b, 0, q.shape[1]), jnp.float32)
    hardest_sim = jnp.zeros((b, 0), jnp.float32)
    if hardest:
        hardest_sim, hardest_idx = jax.lax.top_k(jax.lax.stop_gradient(queue_sim), hardest)
        row_keys = _per_row_keys(mochi_key, b, axis_name)
        points = jax.vmap(_mochi_points, in_axes=(0, 0, 0, None, None))(row_keys, q, queue[hardest_idx], mix, query_mix)
        synthetic = jax.lax.stop_gradient(points)
    synthetic_sim = jnp.einsum("bd,bsd->bs", q, synthetic)

    blocks = [jnp.sum(q * positive_key, axis=-1, keepdims=True)]
    masks = [jnp.zeros((b, 1), bool)]
    if in_batch_negatives:
        local_rows = row_offset(b, axis_name) + jnp.arange(b)
        blocks.append(similarity(q, batch_keys))
        masks.append(local_rows[:, None] != jnp.arange(batch_keys.shape[0])[None, :])
    blocks += [queue_sim, synthetic_sim]
    masks += [jnp.ones(queue_sim.shape, bool), jnp.ones(synthetic_sim.shape, bool)]
    return MocoSimilarities(
        sim=jnp.concatenate(blocks, axis=1),
        negative_mask=jnp.concatenate(masks, axis=1),
        query=q,
        positive_key=positive_key,
        queue=queue,
        synthetic=synthetic,
        hardest_sim=hardest_sim,
    )


# ----------------------------------------------------------------------------------------- the loss
def moco(
    q: Array,
    k: Array,
    queue: Array,
    *,
    temperature=0.2,
    in_batch_negatives: bool = True,
    key=None,
    mochi_hardest: int = 0,
    mochi_mix: int = 0,
    mochi_query_mix: int = 0,
    ft_extrapolation_alpha: float = 0.0,
    ft_interpolation_alpha: float = 0.0,
    axis_name: str | None = None,
) -> tuple[Array, dict[str, Array]]:
    """MoCo v2 InfoNCE of the global batch (mean over the N queries), with optional MoCHi and FT.

    Args:
      q: [b, D] this device's queries (online encoder); normalised inside, any float dtype.
      k: [b, D] keys of the same images (momentum encoder); stop-gradient inside.
      queue: [K, D] past keys, the same on every device (normalised inside; constant).
      temperature: T > 0 dividing the cosine similarities (MoCo v2: 0.2).
      in_batch_negatives: also use the other keys of the global batch as negatives.
      key: PRNG key, required when MoCHi or FT is on (use the same key on every device).
      mochi_hardest: N_h, the size of the hardest-negative pool (0: MoCHi off); <= K.
      mochi_mix: s, synthetic negatives mixed from two hard negatives (needs N_h >= 2).
      mochi_query_mix: s', synthetic negatives mixed from the query and a hard negative.
      ft_extrapolation_alpha: alpha of FT positive extrapolation (0: off).
      ft_interpolation_alpha: alpha of FT negative interpolation (0: off).
      axis_name: mesh axis the batch is sharded over inside ``jax.shard_map``, or None.

    Returns:
      (loss, metrics): float32 scalar, and global means of the similarities the loss uses (after FT):
      ``pos_sim`` (q.k), ``neg_sim`` (q.n over the queue), ``top1_acc`` (fraction of queries whose
      positive beats every negative in its denominator, synthetic ones included); with MoCHi also
      ``mochi_sim`` (q.h over the synthetic negatives) and ``hardest_neg_sim`` (q.n over the N_h hardest).
    """
    check_positive("temperature", temperature)
    sims = moco_similarities(
        q,
        k,
        queue,
        key=key,
        in_batch_negatives=in_batch_negatives,
        mochi_hardest=mochi_hardest,
        mochi_mix=mochi_mix,
        mochi_query_mix=mochi_query_mix,
        ft_extrapolation_alpha=ft_extrapolation_alpha,
        ft_interpolation_alpha=ft_interpolation_alpha,
        axis_name=axis_name,
    )
    per_query = softmax_xent_rows(
        sims.sim, sims.positive_mask, sims.negative_mask, scale=1.0 / jnp.asarray(temperature)
    )
    return global_mean(per_query, axis_name), _metrics(sims, axis_name)


def _metrics(sims: MocoSimilarities, axis_name: str | None) -> dict[str, Array]:
    sims = jax.lax.stop_gradient(sims)
    positive = sims.sim[:, 0]
    hardest_negative = jnp.max(jnp.where(sims.negative_mask, sims.sim, -jnp.inf), axis=-1)
    sums = {
        "pos_sim": jnp.sum(positive),
        "neg_sim": jnp.sum(sims.queue_sim),
        "top1_acc": jnp.sum(positive > hardest_negative, dtype=jnp.float32),
    }
    counts = {"pos_sim": 1, "neg_sim": sims.queue.shape[0], "top1_acc": 1}
    if sims.synthetic.shape[1]:
        sums["mochi_sim"] = jnp.sum(sims.synthetic_sim)
        sums["hardest_neg_sim"] = jnp.sum(sims.hardest_sim)
        counts["mochi_sim"] = sims.synthetic.shape[1]
        counts["hardest_neg_sim"] = sims.hardest_sim.shape[1]
    sums = global_sum(sums, axis_name)
    num_queries = sims.sim.shape[0] * num_devices(axis_name)
    return {name: total / (num_queries * counts[name]) for name, total in sums.items()}
