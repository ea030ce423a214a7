"""MoCo v2 on the digits, optionally with MoCHi hard-negative mixing or feature transformation.

He et al., "Momentum Contrast", CVPR 2020; Chen et al., "Improved Baselines with Momentum Contrastive
Learning" (MoCo v2), 2020. Queries from the online network, keys from its EMA (constant momentum 0.99 for a
600-step run; the paper's 0.999 is for ImageNet epochs), InfoNCE over a queue of 1,024 past keys plus the
batch's keys.

`--config configs/moco_digits.py:mochi` adds MoCHi (Kalantidis et al., NeurIPS 2020): N=128 hardest queue
negatives, s=64 mixed and s'=32 query-mixed synthetic negatives.
`--config configs/moco_digits.py:ft` adds feature transformation (Zhu et al., ICCV 2021): positive
extrapolation and negative interpolation, Beta(2, 2).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None):
    c = common.base_config()
    c.loss = ml_collections.ConfigDict({"name": "moco", "temperature": 0.2, "in_batch_negatives": True})
    c.method = common.method_settings("moco")
    c.method.queue_size = 1024
    c.method.ema.momentum = 0.99
    c.method.ema.momentum_end = 0.99
    if arg == "mochi":
        c.loss.update({"mochi_hardest": 128, "mochi_mix": 64, "mochi_query_mix": 32})
    elif arg == "ft":
        c.loss.update({"ft_extrapolation_alpha": 2.0, "ft_interpolation_alpha": 2.0})
    elif arg:
        raise ValueError(f"configs/moco_digits.py takes '', 'mochi' or 'ft', got {arg!r}")
    return c
