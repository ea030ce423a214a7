"""W-MSE on the digits: whiten each sub-batch of projections, then pull positives together.

Ermolov et al., "Whitening for Self-Supervised Representation Learning", ICML 2021. W-MSE 2 (two views);
`--config.augment.num_views=4` is W-MSE 4. Whitening groups of 128 rows of 32-d projections (w_size must
exceed the dimension). `whitening='global'` groups the global batch and psums the statistics, so the run is
the same on any number of devices; `'local'` is the reference's per-GPU statistics (each device whitens
groups of its own rows, so w_size must divide the per-device batch).

`loss.eps=1e-3` shrinks each covariance towards the identity, Sigma' = (1 - eps) Sigma + eps I. The
paper's code uses eps=0, but then a covariance the head cannot fill is singular: with
`model.projection_dim=128` after the 128-wide hidden layer and `loss.w_size=256`, the run reached a
non-finite loss at step 45 at eps=0 and trained its 300 steps at eps=1e-3 (linear probe 98.65%, kNN 87.87%). Set
`--config.loss.eps=0` for the paper's exact whitening.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None):
    del arg
    c = common.base_config()
    c.loss = ml_collections.ConfigDict({"name": "wmse", "w_size": 128, "w_iter": 1, "eps": 1e-3,
                                        "whitening": "global"})
    c.model.head_norm = "batch"
    c.model.projection_dim = 32
    return c
