"""Supervised contrastive learning (SupCon, L_out) on the digits: positives are all views of the same class.

Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020. Uses the labels, so its probes are an upper
reference for the self-supervised configs, not a comparison with them.
"""

from configs import common


def get_config(arg: str | None = None):
    del arg
    c = common.base_config()
    c.loss.name = "supcon"
    c.loss.temperature = 0.1
    return c
