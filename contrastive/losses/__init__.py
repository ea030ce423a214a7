"""Contrastive losses: pure functions ``loss, metrics = f(embeddings..., *, hparams, axis_name=None)``.

Every softmax-family loss is a parameterisation of ``core.softmax_xent_rows`` (masks, per-pair scales,
positive weights and ``core.Variants``); ``siglip`` is a ring of ppermutes with a custom VJP.
With ``impl='ring'`` and/or ``chunk_size`` the softmax losses stream their row totals over key blocks and
tiles instead (``losses.streamed`` on ``contrastive.parallel.ring``), never holding a b_local x B block.
``moco`` adds a key queue (and MoCHi / feature transformation); ``byol``, ``simsiam`` and ``wmse`` have no
negatives (a predictor with a target or a stop-gradient; whitening).
"""

from contrastive.losses.bootstrap import byol, simsiam
from contrastive.losses.clip import clip
from contrastive.losses.core import Variants, softmax_xent_rows
from contrastive.losses.dcl import dcl, dclw_weight
from contrastive.losses.infoloob import infoloob
from contrastive.losses.moco import moco
from contrastive.losses.nt_xent import nt_xent
from contrastive.losses.siglip import siglip
from contrastive.losses.supcon import supcon
from contrastive.losses.wmse import whiten, wmse

__all__ = [
    "Variants",
    "byol",
    "clip",
    "dcl",
    "dclw_weight",
    "infoloob",
    "moco",
    "nt_xent",
    "siglip",
    "simsiam",
    "softmax_xent_rows",
    "supcon",
    "whiten",
    "wmse",
]
