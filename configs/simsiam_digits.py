"""SimSiam on the digits: a predictor and a stop-gradient, no EMA target and no negatives.

Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021. BatchNorm (synchronised over the
global batch) in the projector and a bottleneck predictor, as in the paper. `--config.loss.stop_gradient=False`
is the paper's collapse ablation.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None):
    del arg
    c = common.base_config()
    c.loss = ml_collections.ConfigDict({"name": "simsiam", "stop_gradient": True})
    c.model.head_norm = "batch"
    c.model.predictor_hidden = (32,)
    c.method = common.method_settings("simsiam")
    c.num_steps = 1200  # twice SimCLR's: at 600 steps its kNN accuracy is below the random encoder's
    return c
