"""SimCLR (NT-Xent) on the bundled 8x8 handwritten digits: the default run.

python -m contrastive.main --config configs/simclr_digits.py --workdir runs/simclr_digits
"""

from configs import common


def get_config(arg: str | None = None):
    del arg
    c = common.base_config()
    c.loss.name = "nt_xent"
    c.loss.temperature = 0.2
    return c
