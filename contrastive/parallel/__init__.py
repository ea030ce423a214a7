"""Parallel primitives: the ppermute ring and tiled row reductions of the memory-bounded losses, GradCache.

The losses select the ring / tiled paths with ``impl='ring'`` and ``chunk_size`` (``contrastive.losses``);
``grad_cache`` chunks the encoder.
"""

from contrastive.parallel.gradcache import grad_cache
from contrastive.parallel.ring import as_varying, ring_row_losses, ring_shift
from contrastive.parallel.tiled import tiled_grads, tiled_totals

__all__ = ["as_varying", "grad_cache", "ring_row_losses", "ring_shift", "tiled_grads", "tiled_totals"]
