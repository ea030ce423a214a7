"""SimCLR on CIFAR-10 with a ResNet-18 (CIFAR stem), solo-learn's recipe.

Reference: solo-learn (da Costa et al., JMLR 2022), `scripts/pretrain/cifar/simclr.yaml`, which reports
90.74% linear-probe top-1 on CIFAR-10 after 1,000 epochs (batch 256). Its settings, taken here: LARS,
lr 0.4 x batch/256, weight decay 1e-5, 10 warm-up epochs then cosine; temperature 0.2; a 2,048-wide
projector to 256 dimensions; crops of 8-100% of the area, flip 0.5, colour jitter 0.8 (0.4, 0.4, 0.2,
0.1), grayscale 0.2, no blur or solarisation at 32x32. Not reproduced on this CPU (about 196,000 steps).

Needs CIFAR-10 prepared: `tfds build cifar10 --data_dir ~/tensorflow_datasets --file_format=array_record`.
`--config configs/simclr_cifar10_resnet18.py:EPOCHS` trains EPOCHS epochs (default 1000).
"""

from configs import common

TRAIN_EXAMPLES = 50_000


def cifar_resnet18(c, epochs: int, lr_per_256: float) -> None:
    """The CIFAR-10 ResNet-18 pieces SimCLR and BYOL share (solo-learn's cifar scripts)."""
    c.data.name = "cifar10"
    c.batch_size = 256
    steps_per_epoch = TRAIN_EXAMPLES // c.batch_size
    c.num_steps = epochs * steps_per_epoch
    c.model.encoder = "resnet18"
    c.model.resnet.stem = "cifar"
    c.model.head_hidden = (2048,)
    c.model.projection_dim = 256
    c.model.head_norm = "batch"
    c.augment.recipe = "simclr_cifar"
    c.augment.crop_scale = (0.08, 1.0)
    c.augment.flip_prob = (0.5,)
    c.augment.jitter_prob = (0.8,)
    c.augment.jitter_brightness = (0.4,)
    c.augment.jitter_contrast = (0.4,)
    c.augment.jitter_saturation = (0.2,)
    c.augment.jitter_hue = (0.1,)
    c.augment.grayscale_prob = (0.2,)
    c.augment.blur_prob = (0.0,)
    c.optimizer.name = "lars"
    c.optimizer.lr = lr_per_256 * c.batch_size / 256
    c.optimizer.weight_decay = 1e-5
    c.optimizer.momentum = 0.9
    c.optimizer.warmup_steps = 10 * steps_per_epoch
    c.optimizer.schedule = "cosine"
    c.checkpoint.every_steps = 5 * steps_per_epoch
    c.log_every = 50
    c.eval.batch_size = 1024


def get_config(arg: str | None = None):
    c = common.base_config()
    cifar_resnet18(c, int(arg or 1000), lr_per_256=0.4)
    c.loss.name = "nt_xent"
    c.loss.temperature = 0.2
    c.augment.solarize_prob = (0.0,)
    return c
