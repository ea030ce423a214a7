"""Cross-modal retrieval Recall@K (image -> text and text -> image).

The retrieval metric of CLIP (Radford et al. 2021, Table 13), ALIGN (Jia et al. 2021) and the
Flickr30k / MS-COCO benchmarks (Karpathy & Fei-Fei 2015): a query is a hit at K when at least one of
its positive keys is among the K keys of highest cosine similarity, and

    Recall@K = 1/Q sum_q [rank(q) < K],   rank(q) = #{keys j : s(q, j) > max_{p in P(q)} s(q, p)},

where P(q) are the positives of q. A pair (q, j) is positive when `query_ids[q] == key_ids[j]`, which
covers several captions per image: with images as queries, query_ids = arange(num_images) and
key_ids = the image index of every caption; the other direction swaps the two. Ties with the best
positive count in the query's favour (strict >), as in the usual implementations.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from contrastive.eval import _common
from contrastive.losses.core import l2_normalize


@functools.partial(jax.jit, static_argnames=("batch_size",))
def positive_ranks(query, keys, query_ids, key_ids, *, batch_size: int = 256):
    """0-based rank [Q] of each query's best positive key by cosine similarity; no input checks.

    Queries are processed `batch_size` at a time, so memory is O(batch_size * num_keys).
    """
    keys = l2_normalize(keys.astype(jnp.float32))
    query = l2_normalize(query.astype(jnp.float32))

    def rank_one(args):
        q, qid = args
        sims = keys @ q
        best_positive = jnp.max(jnp.where(key_ids == qid, sims, -jnp.inf))
        return jnp.sum(sims > best_positive)

    return jax.lax.map(rank_one, (query, query_ids), batch_size=min(batch_size, query.shape[0]))


def _ids(name: str, ids, length: int, rows_name: str) -> np.ndarray:
    if ids is None:
        return np.arange(length, dtype=np.int32)
    return _common.as_labels(name, ids, length, rows_name)


def retrieval_recall(
    query,
    keys,
    *,
    ks: Sequence[int] = (1, 5, 10),
    query_ids=None,
    key_ids=None,
    batch_size: int = 256,
) -> dict:
    """{'recall@K': fraction of queries with a positive key in their top K} for every K in `ks`.

    Args:
      query: [Q, D] query embeddings; keys: [K, D] key embeddings (both normalised inside).
      ks: the K values; each must be between 1 and the number of keys.
      query_ids, key_ids: [Q] and [K] non-negative integers; (q, j) is a positive pair iff the ids are
        equal. Default: arange, i.e. query q matches key q only (needs Q == K). Every query must have a
        positive key.
      batch_size: queries compared with all keys at once (bounds memory).
    """
    query = _common.as_features("query", query)
    keys = _common.as_features("keys", keys)
    _common.check_same_dim("query", query, "keys", keys)
    if query_ids is None and key_ids is None and query.shape[0] != keys.shape[0]:
        raise ValueError(
            f"`query` has {query.shape[0]} rows and `keys` {keys.shape[0]}: without `query_ids`/`key_ids` "
            "query i matches key i, so they must have the same length."
        )
    query_ids = _ids("query_ids", query_ids, query.shape[0], "query")
    key_ids = _ids("key_ids", key_ids, keys.shape[0], "keys")
    missing = np.setdiff1d(query_ids, key_ids)
    if missing.size:
        raise ValueError(f"`query_ids` {missing[:5].tolist()} have no matching entry in `key_ids`.")
    ks = tuple(int(k) for k in ks)
    if not ks or any(not 1 <= k <= keys.shape[0] for k in ks):
        raise ValueError(f"`ks` must be non-empty, each between 1 and the number of keys ({keys.shape[0]}).")
    ranks = positive_ranks(query, keys, query_ids, key_ids, batch_size=int(batch_size))
    ranks = np.asarray(jax.device_get(ranks))  # [Q] ints: tiny, and float64 means are exact enough
    return {f"recall@{k}": float(np.mean(ranks < k)) for k in ks}


def image_text_retrieval(image_emb, text_emb, *, text_to_image=None, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@K both ways: {'image_to_text/recall@K': ..., 'text_to_image/recall@K': ...}.

    Args:
      image_emb: [I, D]; text_emb: [T, D] caption embeddings.
      text_to_image: [T] index of the image each caption describes (several captions per image
        allowed; every image needs one). Default: caption t describes image t (needs T == I).
    """
    image_emb = _common.as_features("image_emb", image_emb)
    text_emb = _common.as_features("text_emb", text_emb)
    if text_to_image is None:
        if image_emb.shape[0] != text_emb.shape[0]:
            raise ValueError(
                f"`image_emb` has {image_emb.shape[0]} rows and `text_emb` {text_emb.shape[0]}: pass "
                "`text_to_image` to say which image each caption describes."
            )
        text_to_image = np.arange(text_emb.shape[0])
    text_to_image = _common.as_labels("text_to_image", text_to_image, text_emb.shape[0], "text_emb")
    image_ids = np.arange(image_emb.shape[0])
    if text_to_image.max() >= image_ids.size or np.setdiff1d(image_ids, text_to_image).size:
        raise ValueError(
            f"`text_to_image` must index the {image_ids.size} images (values < {image_ids.size}) and give "
            "every image at least one caption."
        )
    i2t = retrieval_recall(image_emb, text_emb, ks=ks, query_ids=image_ids, key_ids=text_to_image)
    t2i = retrieval_recall(text_emb, image_emb, ks=ks, query_ids=text_to_image, key_ids=image_ids)
    return {
        **{f"image_to_text/{k}": v for k, v in i2t.items()},
        **{f"text_to_image/{k}": v for k, v in t2i.items()},
    }
