"""SigLIP (pairwise sigmoid loss, learned scale and bias) on the captioned 8x8 digits.

python -m contrastive.main --config configs/siglip_digits.py --workdir runs/siglip_digits
"""

from configs import common


def get_config(arg: str | None = None):
    del arg
    c = common.image_text_config("siglip")
    c.num_steps = 200
    return c
