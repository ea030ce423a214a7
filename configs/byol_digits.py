"""BYOL on the digits: an online network with a predictor regresses an EMA target's projections.

Grill et al., "Bootstrap your own latent", NeurIPS 2020. No negatives; BatchNorm (synchronised over the
global batch) in the projector and predictor as in the paper; target momentum 0.99 -> 1 along a cosine
(the paper starts at 0.996 for 300+ ImageNet epochs; this run is 1,200 steps).
`--config.method.directpred.enabled=True --config.model.predictor_hidden='()'` gives DirectPred
(configs/directpred_digits.py).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None):
    del arg
    c = common.base_config()
    c.loss = ml_collections.ConfigDict({"name": "byol"})
    c.model.head_norm = "batch"
    c.model.predictor_hidden = (128,)
    c.method = common.method_settings("byol")
    c.method.ema.momentum = 0.99
    c.method.ema.momentum_end = 1.0
    c.num_steps = 1200  # twice SimCLR's: at 600 steps its kNN accuracy is still at the random encoder's
    return c
