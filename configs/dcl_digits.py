"""Decoupled contrastive learning (DCL; DCLW with `--config.loss.weighted=True`) on the digits.

Yeh et al., "Decoupled Contrastive Learning", ECCV 2022: NT-Xent without the positive in the denominator.
"""

from configs import common


def get_config(arg: str | None = None):
    del arg
    c = common.base_config()
    c.loss.name = "dcl"
    c.loss.temperature = 0.2
    c.loss.weighted = False
    c.loss.sigma = 0.5
    return c
