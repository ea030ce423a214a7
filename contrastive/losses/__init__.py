"""Contrastive losses: pure functions ``loss, metrics = f(embeddings..., *, hparams, axis_name=None)``.

See ``core`` for the shared similarity core every softmax-family loss is built from.
"""

from contrastive.losses.core import Variants, softmax_xent_rows
from contrastive.losses.nt_xent import nt_xent

__all__ = ["Variants", "nt_xent", "softmax_xent_rows"]
