"""Contrastive losses: pure functions ``loss, metrics = f(embeddings..., *, hparams, axis_name=None)``.

Every softmax-family loss is a parameterisation of one engine (``core.softmax_terms`` and
``core.finalize_rows``: masks, per-row or per-pair scales, positive weights and ``core.Variants``);
``siglip`` has its own block of sigmoid terms. ``losses.streamed`` runs a loss's block dense (one whole
block), tiled (``chunk_size``) or around a ring of devices (``impl='ring'``, ``contrastive.parallel.ring``),
picking by ``impl='auto'``. ``reduction='none'`` gives the per-anchor rows instead of the mean.
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
