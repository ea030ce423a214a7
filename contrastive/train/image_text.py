"""The image-text (CLIP-family) pieces of a run: checks, data, tokenizer, dual encoder, step, evaluation.

The runner is family-agnostic: `check` runs with the other config checks before any compute, and
`build` returns the same `Built` bundle as the view-based family (train source, model state, jitted
step, final evaluation), so checkpoints, resume, metrics and the progress bar are shared.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from contrastive.data import image_text, pipeline
from contrastive.data.tokenizer import WordTokenizer
from contrastive.eval.zero_shot import CLASS_SLOT
from contrastive.models.dual import build_dual_encoder
from contrastive.train import eval_data, evaluators
from contrastive.train.config import ConfigError
from contrastive.train.objectives import IMAGE_TEXT_LOSSES
from contrastive.train.step import init_state, make_encode_fn, make_image_text_step, state_shardings


def check(config, augment) -> None:
    """Image-text checks that need no data; raises ConfigError naming the key."""
    try:
        image_text.check_name(config.data.name)
    except ValueError as e:
        raise ConfigError(f"{e} (loss.name={config.loss.name!r} trains a dual encoder on image-text data)") from None
    if augment.num_views != 1:
        raise ConfigError(f"image-text losses pair one view of each image with a caption: augment.num_views must "
                          f"be 1, got {augment.num_views}")
    t = config.model.text
    if t.max_len < 2 or t.max_captions < 1 or t.max_vocab < 4:
        raise ConfigError(f"model.text needs max_len >= 2, max_captions >= 1 and max_vocab >= 4; got {t.max_len}, "
                          f"{t.max_captions} and {t.max_vocab}")
    if t.width % t.num_heads:
        raise ConfigError(f"model.text.width={t.width} is not divisible by model.text.num_heads={t.num_heads}")
    init_from = config.model.lit.init_from
    if init_from and not (pathlib.Path(init_from).expanduser() / "checkpoints").is_dir():
        raise ConfigError(f"model.lit.init_from={config.model.lit.init_from!r} has no checkpoints/ folder")


def zero_shot_prompts(config) -> list[str]:
    """The prompts of the `zero_shot` evaluator (they join the tokenizer's vocabulary)."""
    names = image_text.classnames(config.data.name) or ()
    templates = config.evals.zero_shot.templates if "zero_shot" in config.evals else ()
    return [t.replace(CLASS_SLOT, n) for n in names for t in templates]


def load_split(config, split: str, tokenizer: WordTokenizer | None):
    """(raw source, captioned source); the captioned one is read into memory with `data.in_memory`."""
    raw = image_text.tfds_source(config.data.name, split, str(pathlib.Path(config.data.data_dir).expanduser()))
    if tokenizer is None:
        return raw, None
    source = image_text.CaptionedSource(raw, config.data.name, tokenizer, max_captions=config.model.text.max_captions,
                                        image_size=tuple(config.data.image_size) or None)
    if config.data.in_memory:
        source = pipeline.InMemorySource(pipeline.read_all(source, image_text.KEYS))
    return raw, source


def load_image_tower(model, run_dir: str) -> None:
    """LiT: copy the image encoder of the newest checkpoint of an image-only run into `model.image.encoder`.

    The run must have used the same `model.encoder`, `widths` and `dense`; its state is read as plain
    arrays (no optimizer needed) and only `params/encoder` is used.
    """
    directory = (pathlib.Path(run_dir).expanduser() / "checkpoints").absolute()
    steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    if not steps:
        raise ConfigError(f"model.lit.init_from: no checkpoint in {directory}")
    restored = ocp.StandardCheckpointer().restore(directory / str(steps[-1]) / "state")
    source = _pure_arrays(restored["params"]["encoder"])
    target = nnx.state(model.image.encoder, nnx.Param)
    want, got = (jax.tree.map(np.shape, t) for t in (target.to_pure_dict(), source))
    if want != got:
        raise ConfigError(f"model.lit.init_from: the image encoder of {run_dir} has parameters {got}, this model "
                          f"{want}; use the same model.encoder, widths and dense as that run")
    nnx.replace_by_pure_dict(target, source)
    nnx.update(model.image.encoder, target)
    if jax.process_index() == 0:
        print(f"LiT: image encoder initialised from {directory / str(steps[-1])}", file=sys.stderr)


def _pure_arrays(tree):
    """A raw orbax tree of nnx parameters as `State.to_pure_dict()` has it: list indices as ints, and each
    Variable's {'value': array} as the array."""
    if isinstance(tree, dict):
        if set(tree) == {"value"}:
            return np.asarray(tree["value"])
        return {int(k) if isinstance(k, str) and k.isdigit() else k: _pure_arrays(v) for k, v in tree.items()}
    return np.asarray(tree)


def build(config, setup, built_cls):
    """Data, tokenizer, dual encoder, state and step of an image-text run, as a `built_cls` bundle."""
    raw_train, _ = load_split(config, config.data.train_split, None)
    t = config.model.text
    tokenizer = image_text.build_tokenizer(config.data.name, raw_train, max_len=t.max_len, max_vocab=t.max_vocab,
                                           num_examples=t.vocab_examples, extra_texts=zero_shot_prompts(config))
    _, train_source = load_split(config, config.data.train_split, tokenizer)
    image_shape = tuple(train_source[0]["image"].shape)
    model = build_dual_encoder(config.model, image_shape, tokenizer.vocab_size, seed=config.seed,
                               with_bias=IMAGE_TEXT_LOSSES[config.loss.name])
    if config.model.lit.init_from:
        load_image_tower(model, config.model.lit.init_from)
    graphdef, state = init_state(model, setup.tx, config.seed)
    pixel_max = pipeline.max_pixel_value(config.data.name)
    step = make_image_text_step(graphdef, setup.tx, setup.objective, setup.augment, setup.mesh,
                                max_pixel_value=pixel_max,
                                state_sharding=state_shardings(state, setup.mesh, config.sharding))

    encode, embed = make_encode_fn(graphdef), evaluators.make_dual_embed(graphdef)
    # Evaluation streams each split's images from its source; labels and caption tokens are read once and kept.
    stream = lambda source: eval_data.EvalSplit(source, small_keys=("label", "tokens", "num_captions"),
                                                batch_size=config.eval.batch_size, mesh=setup.mesh,
                                                num_workers=pipeline.worker_count(config.data.num_workers))
    splits = {config.data.train_split: stream(train_source)}
    num_test = len(load_split(config, config.data.test_split, None)[0])
    evaluators.check_sizes(setup.evals, config, evaluators.SplitSizes(len(train_source), num_test, image_shape))

    def split_arrays(split):
        if split not in splits:
            splits[split] = stream(load_split(config, split, tokenizer)[1])
        return splits[split]

    def eval_context(state):
        return evaluators.EvalContext(
            config=config, graphdef=graphdef, state=state, family="image_text", pixel_max=pixel_max,
            train=split_arrays(config.data.train_split), load_test=lambda: split_arrays(config.data.test_split),
            build_model=lambda: build_dual_encoder(config.model, image_shape, tokenizer.vocab_size, seed=config.seed,
                                                   with_bias=IMAGE_TEXT_LOSSES[config.loss.name]),
            encode=encode, embed=embed, tokenizer=tokenizer, classnames=image_text.classnames(config.data.name))

    return built_cls(train_source=train_source, keys=("image", "tokens", "num_captions"), graphdef=graphdef,
                     state=state, train_step=step, eval_context=eval_context)
