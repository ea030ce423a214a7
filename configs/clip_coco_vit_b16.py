"""CLIP with a ViT-B/16 image tower and a 12-layer text Transformer on MS-COCO captions, CLIP's recipe.

Reference: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML
2021, appendix F ("Common CLIP hyperparameters" and "CLIP-ViT hyperparameters"): ViT-B/16 trained for
32 epochs on 400M image-text pairs (WIT) reaches 68.6% zero-shot top-1 on ImageNet (prompt ensemble).
Its settings, taken here: batch 32,768; AdamW, peak lr 5e-4, beta1 0.9, beta2 0.98 (ViT), weight decay 0.2
on weight matrices only, 2,000 warm-up steps then cosine decay; learned temperature initialised at 0.07
(logit scale 1/0.07) and clipped at 100; mixed precision (bfloat16 compute here); a 512-dimensional joint
space reached by linear projections of the ViT's class token and of the text tower's end-of-text token; a
text tower of width 512, 12 layers, 8 heads, 77 tokens, vocabulary 49,408; images at 224x224 with no
augmentation beyond the resized centre crop (CLIP used only a random square crop).

What differs from the paper, and why:
* The data: TFDS `coco_captions` (Karpathy splits; 82,783 train images with 5-7 captions each, 5,000
  test), about 4,800 times fewer images than WIT, so the paper's number is not expected here. CLIP's
  schedule saw 12.8B pairs (390,625 steps); the length here is given in COCO epochs
  (`--config configs/clip_coco_vit_b16.py:EPOCHS`, default 10,000: 2 steps per epoch at batch 32,768, so
  20,000 steps, 10 times the warm-up). That default is ours, not the paper's.
* The tokenizer: the library's word tokenizer (`contrastive.data.tokenizer`, words of the train captions,
  at most 49,408 of them) instead of CLIP's byte-pair encoding; and the text tower attends in both
  directions (PAD keys masked) where CLIP's is causal.
* The image projection has a bias (768 x 512 + 512; CLIP's has none).
* Adam's epsilon is optax's default 1e-8 (CLIP: 1e-6 for the ViTs; `config.optimizer` has no epsilon).
* Evaluation: image->text and text->image Recall@1/5/10 on the test split (COCO has no class names for
  zero-shot; the linear probe is left out, its labels would be the first object's category).

Needs accelerators (the paper used 256 V100s for about 12 days for ViT-L/14); not run here. Needs
coco_captions prepared: `pip install tensorflow` (its TFDS builder imports TensorFlow), then
`tfds build coco_captions --data_dir ~/tensorflow_datasets --file_format=array_record`.
"""

import math

from configs import common

TRAIN_EXAMPLES = 82_783  # coco_captions 'train' (Karpathy split)
BATCH_SIZE = 32_768
WARMUP_STEPS = 2_000


def get_config(arg: str | None = None):
    c = common.image_text_config("clip")
    c.data.name = "coco_captions"
    c.data.train_split = "train"
    c.data.test_split = "test"
    c.data.image_size = (224, 224)
    c.data.in_memory = False
    c.batch_size = BATCH_SIZE
    steps_per_epoch = TRAIN_EXAMPLES // c.batch_size
    c.num_steps = int(arg or 10_000) * steps_per_epoch

    c.model.encoder = "vit_b"
    c.model.vit.patch_size = 16
    c.model.vit.pool = "cls"
    c.model.dtype = "bfloat16"
    c.model.head_hidden = ()  # a linear projection to the joint space, as CLIP's
    c.model.head_norm = "none"
    c.model.projection_dim = 512
    c.model.logit_scale_init = math.log(1 / 0.07)
    c.model.logit_scale_max = 100.0

    c.model.text.width = 512
    c.model.text.depth = 12
    c.model.text.num_heads = 8
    c.model.text.mlp_ratio = 4
    c.model.text.pool = "eos"
    c.model.text.max_len = 77
    c.model.text.max_captions = 7  # COCO images have 5-7 captions
    c.model.text.max_vocab = 49_408
    c.model.text.vocab_examples = TRAIN_EXAMPLES

    c.optimizer.name = "adamw"
    c.optimizer.lr = 5e-4
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.98
    c.optimizer.weight_decay = 0.2
    c.optimizer.warmup_steps = WARMUP_STEPS
    c.optimizer.schedule = "cosine"

    c.checkpoint.every_steps = 1_000
    c.log_every = 100
    c.eval.batch_size = 1024
    c.evals = common.evals_config("retrieval")
    return c
