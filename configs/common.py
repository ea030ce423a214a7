"""Shared pieces of every config: compose them in a configs/<method>_<dataset>.py `get_config`."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Every field the runner reads, with defaults; a method config overrides what it needs."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.num_steps = 600
    c.batch_size = 256  # global, over all devices and processes
    c.num_devices = 0  # 0: every local device; n: the first n (e.g. 1 to compare with 8)
    # GradCache: each device encodes its rows (x views) in this many sub-batches; 0 = off. Same gradient,
    # encoder memory of one sub-batch (Gao et al. 2021). View-based losses only.
    c.grad_cache_chunks = 0
    # Where the state's arrays live: replicated (a whole copy per device) | fsdp (parameters, optimizer
    # state and the rest split over the data axis, big_vision's rule: contrastive/parallel/sharding.py).
    c.sharding = "replicated"

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"  # | photo_digits | cifar10 | cifar100 | stl10 | imagenette | imagenet2012 | any TFDS name
    c.data.data_dir = "~/tensorflow_datasets"
    c.data.train_split = "train"  # stl10: 'unlabelled' pre-trains on its 100,000 unlabelled images
    c.data.test_split = "test"
    c.data.probe_train_split = ""  # the labelled split the probes are fitted on; '' = train_split
    c.data.in_memory = True  # read the split into memory once (small datasets; False for ImageNet)
    # (H, W): every image scaled so that its shorter side fits, then centre-cropped, on the host; () keeps
    # the stored size (imagenette and imagenet2012 vary in size and need one)
    c.data.image_size = ()
    c.data.num_workers = 0  # threads reading, decoding and resizing examples; 0 = one per CPU core
    c.data.prefetch = 2  # batches read ahead while a step runs

    c.augment = ml_collections.ConfigDict()
    c.augment.num_views = 2
    c.augment.recipe = "digits"  # per-view op lists, contrastive.data.augment.RECIPES
    c.augment.max_zoom = 0.15
    c.augment.max_rotation_deg = 15.0
    c.augment.max_shear = 0.15
    c.augment.max_shift = 1.0
    c.augment.brightness = 0.2
    c.augment.contrast = 0.3
    c.augment.noise_std = 0.05
    c.augment.cutout_size = 3
    c.augment.cutout_prob = 0.5
    # The simclr | simclr_cifar | byol recipes' ops (contrastive/data/augment.py). Per-view fields are
    # tuples, view v uses entry v % len (e.g. blur_prob=(1.0, 0.1): BYOL); () = the recipe's value.
    c.augment.crop_scale = (0.08, 1.0)  # random resized crop: area fraction range
    c.augment.crop_ratio = (3 / 4, 4 / 3)  # aspect ratio (width / height) range, log-uniform
    c.augment.flip_prob = ()  # per view; simclr, byol: 0.5
    c.augment.jitter_prob = ()  # per view: colour jitter applied; 0.8
    c.augment.jitter_brightness = ()  # per view: additive delta ~ U(-b, b); simclr 0.8, byol 0.4
    c.augment.jitter_contrast = ()  # per view: factor ~ U(1 - c, 1 + c); simclr 0.8, byol 0.4
    c.augment.jitter_saturation = ()  # per view: factor ~ U(1 - s, 1 + s); simclr 0.8, byol 0.2
    c.augment.jitter_hue = ()  # per view: hue shift ~ U(-h, h) of the circle; simclr 0.2, byol 0.1
    c.augment.grayscale_prob = ()  # per view; 0.2
    c.augment.blur_prob = ()  # per view; simclr 0.5, simclr_cifar 0, byol (1.0, 0.1)
    c.augment.blur_sigma = (0.1, 2.0)  # Gaussian blur sigma range, pixels
    c.augment.blur_kernel_frac = 0.1  # kernel side / image height (23 at 224, 3 at 32)
    c.augment.solarize_prob = ()  # per view; simclr 0, byol (0.0, 0.2)
    c.augment.solarize_threshold = 0.5  # pixels >= threshold are inverted

    c.model = ml_collections.ConfigDict()
    c.model.encoder = "cnn"  # cnn | mlp | resnet18 | resnet34 | resnet50 | vit_ti | vit_s | vit_b
    c.model.dtype = "float32"  # resnet, vit: compute dtype (float32 | bfloat16); parameters stay float32
    c.model.remat = False  # resnet, vit: recompute each block's activations in the backward pass
    c.model.vit = ml_collections.ConfigDict()  # the vit encoders' options (contrastive.models.vit)
    c.model.vit.patch_size = 16  # must divide the image size
    c.model.vit.pool = "cls"  # cls: the class token's output | gap: the mean of the patch tokens
    c.model.resnet = ml_collections.ConfigDict()  # the resnet encoders' options (contrastive.models.resnet)
    c.model.resnet.stem = "cifar"  # cifar: 3x3/1 conv, no pool (small images) | imagenet: 7x7/2 conv + max-pool
    c.model.resnet.norm = "batch"  # batch (synchronised over the global batch) | group
    c.model.resnet.width = 1.0  # channel multiplier (1: the published network)
    c.model.resnet.zero_init_residual = False  # each block's last norm starts at scale 0
    c.model.widths = (32, 64)
    c.model.dense = (256,)  # cnn: widths of ReLU layers on the flattened map; () = global average pooling
    c.model.head_hidden = (128,)
    c.model.projection_dim = 64
    # layer | batch | none: the norm between the head's (and predictor's) layers. batch = BatchNorm over
    # the global batch (synchronised across devices), as BYOL/SimSiam/W-MSE use in their heads.
    c.model.head_norm = "layer"
    c.model.predictor_hidden = ()  # hidden widths of the predictor MLP (BYOL, SimSiam); () = no predictor
    # View-based methods: False runs the networks once on all views (BatchNorm statistics pool the views,
    # as SimCLR's reference code); True once per view (each view normalised on its own, as BYOL's reference
    # code and solo-learn). Same parameters, same count of examples; only the batch statistics differ.
    c.model.batch_norm_per_view = False

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "nt_xent"
    c.loss.temperature = 0.2

    # The method's own settings (EMA momentum, queue size, ...): none for SimCLR; a method's config file
    # sets `c.method = method_settings(name)`, the defaults its Method declares.
    c.method = ml_collections.ConfigDict()

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
    c.logging = ml_collections.ConfigDict()
    # Every scalar of metrics.jsonl, eval_history.jsonl and eval.json also as TensorBoard events in
    # <workdir>/tensorboard/{train,eval}, when the tensorboard package is installed (the [tensorboard] extra);
    # without it one line says so and the run goes on. `tensorboard --logdir <workdir>` shows them.
    c.logging.tensorboard = True
    # After the first SIGTERM/SIGINT the run stops once the step in flight is done and saved; if no step
    # finishes within this many seconds (a hung step), or a second signal comes, it exits at once.
    c.stop_grace_s = 120.0
    # Compiled programs are kept here and reused by later runs and resumes ('' turns it off).
    c.compilation_cache_dir = "~/.cache/contrastive/jax"

    c.eval = ml_collections.ConfigDict()
    c.eval.at_end = True  # run the evals entries at the end into <workdir>/eval.json (False: none)
    c.eval.batch_size = 512  # rows per call when encoding the splits
    # What is measured, in order (contrastive.train.evaluators): each entry's every_steps > 0 also runs it
    # every N steps into <workdir>/eval_history.jsonl; at_end=False leaves it out of eval.json.
    c.evals = evals_config("probes", "view_geometry")
    return c


def image_text_config(loss_name: str) -> ml_collections.ConfigDict:
    """`base_config` for a dual encoder trained with an image-text loss (clip | siglip | infoloob) on the
    captioned digits: the image tower's fields as in `base_config`, plus `model.text`, the learned logit
    scale/bias initialisation, LiT and zero-shot templates."""
    import math

    from contrastive.data.captions import CAPTION_TEMPLATES

    c = base_config()
    c.data.name = "digits_captions"  # | coco_captions | ref_coco
    c.augment.num_views = 1  # one view per image, paired with one of its captions

    c.loss = ml_collections.ConfigDict()
    c.loss.name = loss_name
    siglip = loss_name == "siglip"
    # CLIP: t' = log(1/0.07); SigLIP: t' = log 10, b = -10 (b is used by siglip only).
    c.model.logit_scale_init = math.log(10.0) if siglip else math.log(1 / 0.07)
    c.model.logit_bias_init = -10.0
    c.model.logit_scale_max = 100.0

    c.model.text = ml_collections.ConfigDict()
    c.model.text.width = 64
    c.model.text.depth = 2
    c.model.text.num_heads = 4
    c.model.text.mlp_ratio = 2
    c.model.text.pool = "eos"  # eos | mean
    c.model.text.max_len = 12  # ids per caption, EOS included
    c.model.text.max_captions = 16  # captions kept per image (digits_captions has 16)
    c.model.text.max_vocab = 2048
    c.model.text.vocab_examples = 20000  # the vocabulary is built from the captions of this many train images

    c.model.lit = ml_collections.ConfigDict()
    c.model.lit.lock_image = False  # LiT: locked image encoder (no gradient, no update, no decay)
    c.model.lit.init_from = ""  # workdir of an image-only run whose encoder initialises the image tower

    c.evals = evals_config("zero_shot", "retrieval", "probes")
    c.evals.zero_shot.templates = CAPTION_TEMPLATES
    c.evals.probes.representations = ("learned",)  # the image tower's features
    return c


def method_settings(name: str) -> ml_collections.ConfigDict:
    """`config.method` for view-based method `name`: its settings at their defaults (`Method.default_settings`)."""
    from contrastive import methods

    return ml_collections.ConfigDict(methods.get(name).default_settings())


def evals_config(*names: str) -> ml_collections.ConfigDict:
    """`config.evals` with the named evaluators, each with all its options at their defaults."""
    from contrastive.train import evaluators

    return ml_collections.ConfigDict({name: evaluators.default_options(name) for name in names})
