"""CLIP (symmetric InfoNCE with a learned temperature) on the captioned 8x8 digits.

python -m contrastive.main --config configs/clip_digits.py --workdir runs/clip_digits
"""

from configs import common


def get_config(arg: str | None = None):
    del arg
    c = common.image_text_config("clip")
    c.num_steps = 200
    return c
