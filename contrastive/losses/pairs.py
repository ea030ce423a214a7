"""Which pairs are positives: the two layouts of the similarity matrix used by the losses.

* Multi-view (NT-Xent, DCL, SupCon): ``z`` is [b, V, D]; anchors are all ``V * b`` local views, in
  view-major order (view 0 of every sample, then view 1, ...), against all ``V * B`` global views.
  Positives are the other views of the same sample, or of any sample with the same label (SupCon).
* Cross-modal (CLIP, InfoLOOB, SigLIP): anchors of one modality against the other modality's global
  batch; the positive of local row ``i`` is global column ``axis_index * b + i``.

Embeddings of the global batch come from a tiled ``all_gather`` whose transpose routes the gradient of
every key back to the device that owns it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from contrastive.losses.core import gather_rows, l2_normalize, row_offset, similarity

Array = jax.Array


def _view_major(x: Array) -> Array:
    """[n, V, ...] -> [V * n, ...] with row ``v * n + i`` = view v of sample i."""
    return jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[2:])


def multi_view_pairs(z: Array, labels: Array | None, axis_name: str | None):
    """Cosine similarities of local views to global views, with self and positive masks.

    Args:
      z: [b, V, D] local embeddings (normalised inside, in float32).
      labels: [b] integer labels, or None to make each sample its own class.
      axis_name: mesh axis of the batch, or None on one device.

    Returns:
      (sim [V*b, V*B] float32, self_mask, positive_mask), both masks boolean [V*b, V*B].
    """
    b, num_views, _ = z.shape
    z = l2_normalize(z)
    keys = gather_rows(z, axis_name)
    sim = similarity(_view_major(z), _view_major(keys))

    local_ids = row_offset(b, axis_name) + jnp.arange(b)
    global_ids = jnp.arange(keys.shape[0])
    tile_views = lambda ids: jnp.tile(ids, num_views)  # ids of view-major rows
    row_ids, col_ids = tile_views(local_ids), tile_views(global_ids)
    row_view = jnp.repeat(jnp.arange(num_views), b)
    col_view = jnp.repeat(jnp.arange(num_views), keys.shape[0])
    self_mask = (row_ids[:, None] == col_ids[None, :]) & (row_view[:, None] == col_view[None, :])
    if labels is None:
        same_class = row_ids[:, None] == col_ids[None, :]
    else:
        global_labels = gather_rows(labels, axis_name)
        same_class = tile_views(labels)[:, None] == tile_views(global_labels)[None, :]
    return sim, self_mask, same_class & ~self_mask


def cross_modal_pairs(queries: Array, keys: Array, axis_name: str | None):
    """Dot products of local queries to the global keys and the diagonal positive mask.

    Returns:
      (sim [b, B] float32, positive_mask boolean [b, B]).
    """
    global_keys = gather_rows(keys, axis_name)
    sim = similarity(queries, global_keys)
    rows = row_offset(queries.shape[0], axis_name) + jnp.arange(queries.shape[0])
    positive_mask = rows[:, None] == jnp.arange(global_keys.shape[0])[None, :]
    return sim, positive_mask
