"""Shared pieces of every config: compose them in a configs/<method>_<dataset>.py `get_config`."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Every field the runner reads, with defaults; a method config overrides what it needs."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.num_steps = 600
    c.batch_size = 256  # global, over all devices and processes
    c.num_devices = 0  # 0: every local device; n: the first n (e.g. 1 to compare with 8)

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"
    c.data.data_dir = "~/tensorflow_datasets"
    c.data.train_split = "train"
    c.data.test_split = "test"
    c.data.in_memory = True  # read the split into memory once (small datasets)

    c.augment = ml_collections.ConfigDict()
    c.augment.num_views = 2
    c.augment.max_zoom = 0.15
    c.augment.max_rotation_deg = 15.0
    c.augment.max_shear = 0.15
    c.augment.max_shift = 1.0
    c.augment.brightness = 0.2
    c.augment.contrast = 0.3
    c.augment.noise_std = 0.05
    c.augment.cutout_size = 3
    c.augment.cutout_prob = 0.5

    c.model = ml_collections.ConfigDict()
    c.model.encoder = "cnn"  # cnn | mlp
    c.model.widths = (32, 64)
    c.model.dense = (256,)  # cnn: widths of ReLU layers on the flattened map; () = global average pooling
    c.model.head_hidden = (128,)
    c.model.projection_dim = 64

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "nt_xent"
    c.loss.temperature = 0.2

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # adamw | lars | sgd
    c.optimizer.lr = 3e-3  # peak learning rate
    c.optimizer.weight_decay = 1e-4
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.momentum = 0.9  # lars and sgd
    c.optimizer.trust_coefficient = 1e-3  # lars
    c.optimizer.warmup_steps = 40
    c.optimizer.schedule = "cosine"  # cosine | constant
    c.optimizer.grad_clip_norm = 0.0  # 0: no clipping

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 100
    c.checkpoint.keep = 3

    c.log_every = 10
    c.progress = True
    # Compiled programs are kept here and reused by later runs and resumes ('' turns it off).
    c.compilation_cache_dir = "~/.cache/contrastive/jax"

    c.eval = ml_collections.ConfigDict()
    c.eval.at_end = True  # linear probe + kNN of learned, random-init and raw-pixel features
    c.eval.knn_k = 200  # capped by the train-set size
    c.eval.knn_temperature = 0.07
    c.eval.batch_size = 512
    return c
