"""SimCLR on ImageNet (ILSVRC-2012) with a ResNet-50, the paper's recipe.

Reference: Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML
2020: 69.3% linear-evaluation top-1 with a ResNet-50 after 1,000 epochs at batch 4,096. Its settings,
taken here: LARS, lr 0.3 x batch/256 = 4.8, weight decay 1e-6, 10 warm-up epochs then cosine;
temperature 0.1; a 2,048-wide projector to 128 dimensions with BatchNorm; random resized crop
(8-100%), flip, colour jitter 0.8 with strength 1.0 (0.8, 0.8, 0.8, 0.2), grayscale 0.2, Gaussian blur
0.5 (kernel 10% of the side, sigma 0.1-2.0), images at 224x224. Needs accelerators (a pod slice); not
run here.

Needs imagenet2012 prepared: download the ILSVRC-2012 tars into `~/tensorflow_datasets/downloads/manual`
and `tfds build imagenet2012 --data_dir ~/tensorflow_datasets --file_format=array_record`.
`--config configs/simclr_imagenet_resnet50.py:EPOCHS` trains EPOCHS epochs (default 1000).
"""

from configs import common

TRAIN_EXAMPLES = 1_281_167


def get_config(arg: str | None = None):
    c = common.base_config()
    c.data.name = "imagenet2012"
    c.data.image_size = (224, 224)
    c.data.in_memory = False
    c.data.test_split = "validation"
    c.batch_size = 4096
    steps_per_epoch = TRAIN_EXAMPLES // c.batch_size
    c.num_steps = int(arg or 1000) * steps_per_epoch
    c.model.encoder = "resnet50"
    c.model.resnet.stem = "imagenet"
    c.model.dtype = "bfloat16"
    c.model.head_hidden = (2048,)
    c.model.projection_dim = 128
    c.model.head_norm = "batch"
    c.loss.name = "nt_xent"
    c.loss.temperature = 0.1
    c.augment.recipe = "simclr"
    c.optimizer.name = "lars"
    c.optimizer.lr = 0.3 * c.batch_size / 256
    c.optimizer.weight_decay = 1e-6
    c.optimizer.momentum = 0.9
    c.optimizer.warmup_steps = 10 * steps_per_epoch
    c.checkpoint.every_steps = steps_per_epoch
    c.log_every = 100
    c.eval.batch_size = 1024
    c.evals.probes.representations = ("learned",)
    c.evals.probes.linear_solver = "minibatch"
    return c
