"""BYOL on CIFAR-10 with a ResNet-18 (CIFAR stem), solo-learn's recipe.

Reference: solo-learn (da Costa et al., JMLR 2022), `scripts/pretrain/cifar/byol.yaml`, which reports
92.58% linear-probe top-1 on CIFAR-10 after 1,000 epochs (batch 256). Its settings, taken here: LARS,
lr 1.0 x batch/256, weight decay 1e-5, 10 warm-up epochs then cosine; target momentum 0.99 -> 1.0 on a
cosine schedule (Grill et al. 2020); projector and predictor 4,096 wide to 256; the views of
`simclr_cifar10_resnet18.py` with BYOL's asymmetric solarisation (0 / 0.2) and no blur at 32x32.
Not reproduced on this CPU (about 196,000 steps).

`--config configs/byol_cifar10_resnet18.py:EPOCHS` trains EPOCHS epochs (default 1000).
"""

import ml_collections

from configs import common
from configs.simclr_cifar10_resnet18 import cifar_resnet18


def get_config(arg: str | None = None):
    c = common.base_config()
    cifar_resnet18(c, int(arg or 1000), lr_per_256=1.0)
    c.loss = ml_collections.ConfigDict({"name": "byol"})
    c.method = common.method_settings("byol")
    c.method.ema.momentum = 0.99
    c.method.ema.momentum_end = 1.0
    c.model.head_hidden = (4096,)
    c.model.predictor_hidden = (4096,)
    c.augment.recipe = "byol"
    c.augment.solarize_prob = (0.0, 0.2)
    return c
