"""Loss cases shared by the ring and tiled tests: positional wrappers with the same shapes throughout.

Every case is a loss whose learnable temperature / logit scale is a positional (differentiated) scalar,
so the equivalence tests check its gradient too; compiled functions are cached by
``tests.losses.helpers.value_and_grad`` and reused across tests.
"""

from __future__ import annotations

import numpy as np

from contrastive.losses import clip, dcl, infoloob, nt_xent, siglip, supcon
from tests.losses.helpers import D, N, random_embeddings, unit_rows


def nt_xent_positional(z1, z2, temperature, **kw):
    return nt_xent(z1, z2, temperature=temperature, **kw)


def nt_xent_variants(z1, z2, temperature, **kw):
    """Every decomposable variant at once (margins, debiasing, both hardness re-weightings)."""
    return nt_xent(
        z1, z2, temperature=temperature, angular_margin=0.1, additive_margin=0.05,
        false_negative_prior=0.1, hardness_concentration=0.5, hardness_weight=0.3, **kw,
    )


def clip_positional(image, text, logit_scale, **kw):
    return clip(image, text, logit_scale=logit_scale, **kw)


def infoloob_positional(image, text, logit_scale, **kw):
    return infoloob(image, text, logit_scale=logit_scale, **kw)


def dclw_positional(z1, z2, temperature, **kw):
    return dcl(z1, z2, temperature=temperature, weighted=True, **kw)


def supcon_positional(z, temperature, labels, **kw):
    return supcon(z, labels, temperature=temperature, **kw)


def siglip_positional(image, text, logit_scale, logit_bias, **kw):
    return siglip(image, text, logit_scale=logit_scale, logit_bias=logit_bias, **kw)


def _two_views(seed):
    return random_embeddings(seed, N, D), random_embeddings(seed + 1, N, D)


def _pair(seed):
    return unit_rows(random_embeddings(seed, N, D)), unit_rows(random_embeddings(seed + 1, N, D))


# name -> (loss, number of differentiated leading args, args)
CASES = {
    "nt_xent": (nt_xent_positional, 3, (*_two_views(0), np.float32(0.5))),
    "nt_xent_variants": (nt_xent_variants, 3, (*_two_views(2), np.float32(0.3))),
    "clip": (clip_positional, 3, (*_pair(4), np.float32(5.0))),
    "infoloob": (infoloob_positional, 3, (*_pair(6), np.float32(4.0))),
    "siglip": (siglip_positional, 4, (*_pair(12), np.float32(10.0), np.float32(-5.0))),
    "dclw": (dclw_positional, 3, (*_two_views(8), np.float32(0.5))),
    "supcon": (
        supcon_positional,
        2,
        (random_embeddings(10, N, 3, D), np.float32(0.2), np.random.default_rng(11).integers(0, 4, N).astype(np.int32)),
    ),
}
