"""MoCo v2 with a narrow ResNet-18 on the photo digits (contrastive.data.photo_digits).

python -m contrastive.main --config configs/moco_photo_digits.py --workdir runs/moco_photo_digits

He et al., "Momentum Contrast", CVPR 2020; Chen et al., "Improved Baselines with Momentum Contrastive
Learning" (MoCo v2), 2020. Queries from the online network, keys from its EMA (constant momentum 0.99 for
a run of a few epochs; the paper's 0.999 is for ImageNet epochs), InfoNCE at temperature 0.2 over a
queue of 2,048 past keys plus the batch's keys. Encoder, data, augmentations and step count as
configs/simclr_photo_digits.py, but 2,000 steps on `large`: SimCLR's 15 minutes on 2 cores at this step's
rate (3 seeds: 47.7% linear probe at 1,000 steps, 61.5% at 2,000; README). Not tuned beyond these choices: the
learning rate is the SimCLR config's.
"""

import ml_collections

from configs import common
from configs.simclr_photo_digits import photo_digits_base


def get_config(arg: str | None = None):
    c = photo_digits_base(recipe=arg)
    if arg == "large":  # 15 minutes on 2 cores at its 2.3-2.5 steps/s (SimCLR's 1,000 steps at 1.1)
        c.num_steps = 2000
    c.loss = ml_collections.ConfigDict({"name": "moco", "temperature": 0.2, "in_batch_negatives": True})
    c.method = common.method_settings("moco")
    c.method.queue_size = 2048
    c.method.ema.momentum = 0.99
    c.method.ema.momentum_end = 0.99
    return c
