"""InfoLOOB (CLOOB's leave-one-out bound, without the Hopfield retrieval) on the captioned 8x8 digits.

python -m contrastive.main --config configs/infoloob_digits.py --workdir runs/infoloob_digits
"""

from configs import common


def get_config(arg: str | None = None):
    del arg
    c = common.image_text_config("infoloob")
    c.num_steps = 200
    return c
