"""Evaluators by name: what a run measures at its end and every N steps, one registry entry each.

`config.evals` is an ordered mapping, entry name -> that evaluator's options; every entry has
`every_steps` (also run every N steps into `eval_history.jsonl`; 0: only at the end) and `at_end`. The
runner runs the entries in order and merges their results into one dict (`eval.json`); a new evaluator
is one `register_evaluator(Evaluator(...))` and one config entry, from any file.

Built in:

* `probes`: the linear probe, kNN, ridge probe and class-mean classifier of frozen features, with the
  uniformity and tolerance of the features (Wang & Isola 2020; Wang & Liu 2021), for each of the
  `representations`: the learned encoder, the same encoder as initialised (same seed, no training) and
  the raw pixels. Learning is worth something only where it beats both. At scale (see `probe_features`)
  the linear probe switches to mini-batches and kNN streams its bank in blocks.
* `attributes`: the same linear probe and kNN, fitted to the dataset's nuisance attributes instead of the
  label (`DatasetSpec.attributes`, e.g. the photo digits' colour, place and background photo), for each
  of the `representations`, with the test split's majority-class rate: what the features kept besides the
  class. `names` picks some (default: all); the probe options are the `probes` entry's.
* `view_geometry`: alignment of two augmented views of each test image (Wang & Isola 2020) and a
  histogram of their positive and negative cosine similarities (views family).
* `retrieval`: image->text and text->image Recall@1/5/10 over every test caption, and the class-level
  text->image recall (image-text family).
* `zero_shot`: CLIP's zero-shot accuracy with a prompt-template ensemble (Radford et al. 2021; image-text).

An evaluator reads an `EvalContext`: the config, the model, the train state and the splits, with the
features of each representation computed once per evaluation and shared by the evaluators that use them.
A split's images are never held whole (`eval_data.EvalSplit`): they are read from the data source in
batches of `eval.batch_size` rows sharded over the `data` axis of the mesh the train state lives on,
each process reading only the rows its devices hold and encoding them there; the [B, D] outputs are
gathered to every process, which so holds the split's [N, D] features in row order, as one process
would, and fits the probes itself (the same numbers everywhere; the runner writes them once, from
process 0). Per process that is one batch of its rows of images plus the gathered features; labels and
caption tokens (small) are read once and kept. `raw_pixels` are the images themselves, gathered: refused
before training above `evals.probes.raw_pixels_max_elements` values per split.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from contrastive import checks
from contrastive import eval as evaluation
from contrastive.data import pipeline
from contrastive.data.augment import AugmentConfig, augment_views
from contrastive.data.datasets import get_dataset
from contrastive.eval.probes import LINEAR_SOLVERS, PROBE_OPTIONS, probe_features
from contrastive.eval.zero_shot import CLASS_SLOT
from contrastive.parallel.mesh import DATA_AXIS, make_mesh
from contrastive.train import eval_data
from contrastive.train.config import ConfigError
from contrastive.train.step import images_to_float, init_state

REPRESENTATIONS = ("learned", "random_init", "raw_pixels")
RECALL_KS = (1, 5, 10)
COMMON_OPTIONS = {"every_steps": 0, "at_end": True}
COMMON_RULES = {"every_steps": checks.NON_NEGATIVE}
# The largest N x (H x W x C) of a split whose raw pixels the probes take as features: 200M float32 values
# (0.75 GiB on every process) admits CIFAR's 50,000 x 3,072, not ImageNet's 1.28M x 150,528 at 224.
RAW_PIXELS_MAX = "raw_pixels_max_elements"
RAW_PIXELS_MAX_ELEMENTS = 200_000_000


def batched(fn, x: np.ndarray, batch_size: int, mesh: jax.sharding.Mesh | None = None) -> np.ndarray:
    """fn over rows of a host array x (e.g. caption tokens), `batch_size` rows per call (the last call
    padded: one compilation), as a host array.

    With a `mesh`, each call's rows are sharded over its `data` axis (`batch_size` rounded up to a multiple
    of the axis size), so every device computes its part, and the outputs are gathered to the host (in a
    multi-process job every process gets every row: all must call with the same `x`). Without, one device.
    Images are not passed this way: `EvalSplit.map` streams them from their source.
    """
    sharding = None
    if mesh is not None:
        batch_size = eval_data.padded_batch_size(batch_size, mesh)
        sharding = NamedSharding(mesh, P(DATA_AXIS))
    out = []
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size]
        pad = batch_size - len(chunk)
        chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)]) if pad else chunk
        if sharding is not None:
            chunk = jax.make_array_from_callback(chunk.shape, sharding, lambda index, c=chunk: c[index])
        out.append(eval_data.to_host(fn(chunk))[: batch_size - pad])
    return np.concatenate(out)


@dataclasses.dataclass
class EvalContext:
    """What an evaluator reads. `train` and `test` are the splits (`eval_data.EvalSplit`; a dict of arrays
    is wrapped into one): `len(split)`, its small fields whole (`split['label']`, `split['tokens']`, ...),
    its images only through `map_images`, streamed in batches. `test` is opened on first use;
    `features(representation, split)` are cached for the evaluation's duration.

    `encode` is the jitted encoder (`make_encode_fn`), `build_model` rebuilds the model as initialised (for
    `random_init`); `embed` (`make_dual_embed`), `tokenizer` and `classnames` are set for image-text runs.
    """

    config: object
    graphdef: object
    state: object
    family: str  # views | image_text
    pixel_max: float
    train: eval_data.EvalSplit | dict
    load_test: Callable[[], eval_data.EvalSplit | dict]
    build_model: Callable[[], object]
    encode: Callable
    workdir: pathlib.Path | None = None
    embed: Callable | None = None
    tokenizer: object = None
    classnames: tuple | None = None  # class names in label order, when the labels are classes
    _features: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.train = self._as_split(self.train)

    def _as_split(self, split) -> eval_data.EvalSplit:
        if isinstance(split, eval_data.EvalSplit):
            return split
        return eval_data.EvalSplit.of_arrays(split, batch_size=self.config.eval.batch_size)

    @functools.cached_property
    def test(self) -> eval_data.EvalSplit:
        return self._as_split(self.load_test())

    @functools.cached_property
    def mesh(self) -> jax.sharding.Mesh:
        """The mesh the train state's parameters live on (the runner's), else one over `num_devices`."""
        sharding = getattr(jax.tree.leaves(self.state.params)[0], "sharding", None)
        if isinstance(sharding, NamedSharding) and DATA_AXIS in sharding.mesh.axis_names:
            return sharding.mesh
        return make_mesh(self.config.num_devices)

    def split(self, name: str) -> eval_data.EvalSplit:
        return self.train if name == "train" else self.test

    def map_images(self, fn, split: str):
        """fn({'image': uint8 [B, ...], 'row': [B]}) over `split`'s batches on the mesh, gathered to [N, ...]
        on every process (`EvalSplit.map`)."""
        return self.split(split).map(fn, self.mesh)

    def embed_images(self, split: str) -> np.ndarray:
        """The dual encoder's image embeddings [N, d] of `split`."""
        params, model_state = self.state.params, self.state.model_state
        return self.map_images(lambda b: self.embed(params, model_state, images_to_float(b["image"], self.pixel_max),
                                                    None), split)

    def embed_texts(self, tokens: np.ndarray) -> np.ndarray:
        return batched(lambda c: self.embed(self.state.params, self.state.model_state, None, c), tokens,
                       self.config.eval.batch_size, self.mesh)

    def encode_images(self, params, model_state, split: str) -> np.ndarray:
        """The encoder's features [N, D] of `split` with these parameters."""
        return self.map_images(lambda b: self.encode(params, model_state, images_to_float(b["image"], self.pixel_max)),
                               split)

    def features(self, representation: str, split: str) -> np.ndarray:
        """[N, D] float32 features of `split`'s images: the encoder's output (learned or at init) or the
        flattened pixels in [0, 1]."""
        key = (representation, split)
        if key not in self._features:
            if representation == "learned":
                feats = self.encode_images(self.state.params, self.state.model_state, split)
            elif representation == "random_init":
                feats = self.encode_images(self._initial.params, self._initial.model_state, split)
            elif representation == "raw_pixels":  # gathered as stored; the same float32 division on the host
                images = self.map_images(lambda b: b["image"], split)
                feats = np.asarray(images, np.float32).reshape(len(images), -1) / np.float32(self.pixel_max)
            else:
                raise ValueError(f"representation {representation!r} is not one of {REPRESENTATIONS}")
            self._features[key] = np.asarray(feats, np.float32)
        return self._features[key]

    @functools.cached_property
    def _initial(self):
        return init_state(self.build_model(), optax.identity(), self.config.seed)[1]


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """`run(ctx, options) -> results` (merged into eval.json); `format(results) -> lines` for the printed
    table. `options` are the evaluator's defaults updated by its `config.evals` entry."""

    name: str
    run: Callable[[EvalContext, dict], dict]
    options: dict = dataclasses.field(default_factory=dict)  # defaults, besides every_steps and at_end
    rules: dict = dataclasses.field(default_factory=dict)  # checks.check_fields rules of the options
    families: tuple[str, ...] = ("views", "image_text")
    format: Callable[[dict], list[str]] = lambda results: []
    check: Callable[[dict, object], None] = lambda options, config: None  # extra config-time checks
    # checks against the sizes of the splits (`SplitSizes`), once they are opened and before any compute
    check_sizes: Callable[[dict, SplitSizes], None] = lambda options, sizes: None


@dataclasses.dataclass(frozen=True)
class SplitSizes:
    """The evaluated splits' row counts and the shape of one image."""

    num_train: int
    num_test: int
    image_shape: tuple


EVALUATORS: dict[str, Evaluator] = {}


def register_evaluator(evaluator: Evaluator) -> Evaluator:
    """Add `evaluator` under its name (replacing one of that name) and return it."""
    EVALUATORS[evaluator.name] = evaluator
    return evaluator


def default_options(name: str) -> dict:
    """Every option of evaluator `name` at its default (a `config.evals` entry)."""
    return {**COMMON_OPTIONS, **EVALUATORS[name].options}


def entries(config, family: str) -> list[tuple[Evaluator, dict]]:
    """The (evaluator, options) of each `config.evals` entry, checked; ConfigError naming the field."""
    out = []
    for name, given in config.evals.items():
        if name not in EVALUATORS:
            raise ConfigError(f"config.evals.{name}: no evaluator of that name; registered: "
                              f"{', '.join(sorted(EVALUATORS))}")
        evaluator = EVALUATORS[name]
        if family not in evaluator.families:
            raise ConfigError(f"config.evals.{name} evaluates {' or '.join(evaluator.families)} runs, not this "
                              f"{family} run (loss.name={config.loss.name!r}); remove the entry")
        defaults = {**COMMON_OPTIONS, **evaluator.options}
        given = dict(given)
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ConfigError(f"config.evals.{name}.{unknown[0]} is not an option of evaluator {name!r}; valid: "
                              f"{', '.join(sorted(defaults))}")
        options = {**defaults, **given}
        try:
            checks.check_fields(options, f"evals.{name}.", {**COMMON_RULES, **evaluator.rules})
            evaluator.check(options, config)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        out.append((evaluator, options))
    return out


def check_sizes(chosen: list[tuple[Evaluator, dict]], config, sizes: SplitSizes) -> None:
    """Each entry that will run (every N steps, or at the end with `eval.at_end`) checked against the splits'
    sizes; ConfigError naming the option."""
    for evaluator, options in chosen:
        if options["every_steps"] or (options["at_end"] and config.eval.at_end):
            try:
                evaluator.check_sizes(options, sizes)
            except ValueError as e:
                raise ConfigError(str(e)) from None


def run_all(ctx: EvalContext, chosen: list[tuple[Evaluator, dict]]) -> dict:
    """The merged results of `chosen` entries (nested dicts merged key by key, later entries adding)."""
    results: dict = {}
    for evaluator, options in chosen:
        _merge(results, evaluator.run(ctx, options))
    return results


def format_results(chosen: list[tuple[Evaluator, dict]], results: dict) -> str:
    return "\n".join(line for evaluator, _ in chosen for line in evaluator.format(results))


def _merge(into: dict, more: dict) -> None:
    for k, v in more.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


# ------------------------------------------------------------------------------------------ probes
def _probes(ctx: EvalContext, options: dict) -> dict:
    if ctx.family == "image_text" and not ctx.classnames:
        return {}  # the labels are not classes (e.g. a COCO image's first object)
    k = min(options["knn_k"], len(ctx.train))
    results = {"knn_k": k, "knn_temperature": options["knn_temperature"], "num_train": len(ctx.train),
               "num_test": len(ctx.test)}
    extra = {key: options[key] for key in PROBE_OPTIONS if key not in ("knn_k", "knn_temperature")}
    for name in options["representations"]:
        # Features first: a streamed split's first pass also reads its labels.
        train, test = ctx.features(name, "train"), ctx.features(name, "test")
        results[name] = probe_features(ctx.config.seed, train, ctx.train["label"], test, ctx.test["label"], knn_k=k,
                                       knn_temperature=options["knn_temperature"], **extra)
    return results


def _check_raw_pixels_size(options, sizes: SplitSizes, entry: str = "probes") -> None:
    """raw_pixels are the whole split's images as float32 on every process: refused above the option (of
    the `evals.<entry>` entry)."""
    if "raw_pixels" not in tuple(options["representations"]):
        return
    per_row = int(np.prod(sizes.image_shape))
    largest = max(sizes.num_train, sizes.num_test) * per_row
    if largest > options[RAW_PIXELS_MAX]:
        raise ValueError(
            f"evals.{entry}.representations includes 'raw_pixels', whose features are a whole split's images "
            f"({max(sizes.num_train, sizes.num_test)} x {per_row} = {largest:,} float32 values, "
            f"{4 * largest / 2**20:,.0f} MiB on every process), more than evals.{entry}.{RAW_PIXELS_MAX}="
            f"{options[RAW_PIXELS_MAX]:,}: leave 'raw_pixels' out of evals.{entry}.representations, or raise "
            f"evals.{entry}.{RAW_PIXELS_MAX}")


def _check_representations(options, config) -> None:
    reps = tuple(options["representations"])
    bad = [r for r in reps if r not in REPRESENTATIONS]
    if not reps or bad:
        raise ValueError(f"evals.probes.representations={reps!r}: each must be one of {', '.join(REPRESENTATIONS)}"
                         + ("" if reps else ", and at least one is needed"))


def _format_probes(results: dict) -> list[str]:
    reps = [r for r in REPRESENTATIONS if isinstance(results.get(r), dict) and "knn" in results[r]]
    if not reps:
        return []
    rows = [f"{'features':<12} {'dim':>5} {'linear probe':>13} {'kNN (k=' + str(results['knn_k']) + ')':>12} "
            f"{'ridge':>8} {'mean cls':>9} {'uniformity':>11} {'tolerance':>10}"]
    for name in reps:
        r = results[name]
        rows.append(f"{name:<12} {r['feature_dim']:>5} {100 * r['linear_probe']:>12.2f}% {100 * r['knn']:>11.2f}% "
                    f"{100 * r['ridge_probe']:>7.2f}% {100 * r['mean_classifier']:>8.2f}% {r['uniformity']:>11.3f} "
                    f"{r['tolerance']:>10.3f}")
    rows.append(f"(train {results['num_train']} / test {results['num_test']} images)")
    return rows


PROBES = register_evaluator(Evaluator(
    "probes", _probes, options={"representations": REPRESENTATIONS, **PROBE_OPTIONS,
                                RAW_PIXELS_MAX: RAW_PIXELS_MAX_ELEMENTS},
    rules={"knn_k": checks.POSITIVE, "knn_temperature": checks.POSITIVE, "knn_bank_block": checks.NON_NEGATIVE,
           "knn_query_block": checks.POSITIVE, "linear_solver": checks.one_of(LINEAR_SOLVERS),
           "full_batch_max_elements": checks.POSITIVE, "minibatch_size": checks.POSITIVE,
           "minibatch_epochs": checks.POSITIVE, "minibatch_learning_rate": checks.POSITIVE,
           RAW_PIXELS_MAX: checks.POSITIVE, "block_rows": checks.POSITIVE,
           "linear_probe_l2_grid": checks.SOME_POSITIVE},
    format=_format_probes, check=_check_representations, check_sizes=_check_raw_pixels_size))


# -------------------------------------------------------------------------------------- attributes
def _attribute_labels(config, split: str, attribute) -> np.ndarray:
    """The attribute's class of every example of `split`, in row order, from the raw data source (read
    whole on every process: the fields are small)."""
    source = pipeline.data_source(config.data.name, split, str(pathlib.Path(config.data.data_dir).expanduser()))
    arrays = pipeline.read_all(source, attribute.fields)
    return np.asarray(attribute.of(arrays), np.int64)


def _attribute_names(options, config) -> tuple[str, ...]:
    return tuple(options["names"]) or tuple(get_dataset(config.data.name).attributes)


def _attributes(ctx: EvalContext, options: dict) -> dict:
    config = ctx.config
    spec = get_dataset(config.data.name)
    # The probes' options (the `probes` entry's where the config has one), less those of the entry itself.
    probe = {**PROBE_OPTIONS, **{k: v for k, v in dict(config.evals.get("probes", {})).items() if k in PROBE_OPTIONS}}
    k = min(probe["knn_k"], len(ctx.train))
    splits = {"train": (config.data.probe_train_split or config.data.train_split) if ctx.family == "views"
              else config.data.train_split, "test": config.data.test_split}
    out = {}
    for name in _attribute_names(options, config):
        attribute = spec.attributes[name]
        labels = {part: _attribute_labels(config, split, attribute) for part, split in splits.items()}
        for part, split in (("train", ctx.train), ("test", ctx.test)):
            if len(labels[part]) != len(split):
                raise ValueError(f"attribute {name!r}: {len(labels[part])} rows read from split "
                                 f"{splits[part]!r}, but the evaluated split has {len(split)}")
        counts = np.bincount(labels["test"], minlength=len(attribute.classes))
        result = {"classes": len(attribute.classes), "majority": float(counts.max() / counts.sum())}
        for rep in options["representations"]:
            probes = probe_features(config.seed, ctx.features(rep, "train"), labels["train"], ctx.features(rep, "test"),
                                    labels["test"], knn_k=k, knn_temperature=probe["knn_temperature"],
                                    **{key: v for key, v in probe.items() if key not in ("knn_k", "knn_temperature")})
            result[rep] = {"linear_probe": probes["linear_probe"], "knn": probes["knn"]}
        out[name] = result
    return {"attributes": out}


def _check_attributes(options, config) -> None:
    _check_representations(options, config)
    known = tuple(get_dataset(config.data.name).attributes)
    if not known:
        raise ValueError(f"evals.attributes: data.name={config.data.name!r} has no attributes to probe (a "
                         "DatasetSpec's `attributes`); remove the entry")
    unknown = [n for n in options["names"] if n not in known]
    if unknown:
        raise ValueError(f"evals.attributes.names: {unknown[0]!r} is not an attribute of data.name="
                         f"{config.data.name!r}; its attributes: {', '.join(known)}")


def _format_attributes(results: dict) -> list[str]:
    attributes = results.get("attributes") or {}
    if not attributes:
        return []
    reps = [r for r in REPRESENTATIONS if any(r in a for a in attributes.values())]
    rows = [f"{'attribute':<10} {'classes':>7} {'majority':>9} "
            + " ".join(f"{r + ' LP / kNN':>24}" for r in reps)]
    for name, a in attributes.items():
        cells = " ".join(f"{100 * a[r]['linear_probe']:>14.2f}% / {100 * a[r]['knn']:>6.2f}%" for r in reps)
        rows.append(f"{name:<10} {a['classes']:>7} {100 * a['majority']:>8.2f}% {cells}")
    return rows


ATTRIBUTES = register_evaluator(Evaluator(
    "attributes", _attributes, options={"names": (), "representations": ("learned", "random_init"),
                                        RAW_PIXELS_MAX: RAW_PIXELS_MAX_ELEMENTS},
    rules={RAW_PIXELS_MAX: checks.POSITIVE}, format=_format_attributes, check=_check_attributes,
    check_sizes=functools.partial(_check_raw_pixels_size, entry="attributes")))


# ----------------------------------------------------------------------------------- view geometry
def _view_geometry(ctx: EvalContext, options: dict) -> dict:
    config, params, model_state = ctx.config, ctx.state.params, ctx.state.model_state
    key, augment = jax.random.PRNGKey(config.seed), AugmentConfig(**{**config.augment, "num_views": 2})

    def two_views(batch):  # each row's views are keyed by its position in the split, whatever the batch
        views = augment_views(key, images_to_float(batch["image"], ctx.pixel_max), batch["row"], augment)
        return tuple(ctx.encode(params, model_state, images_to_float(views[:, v], 1.0)) for v in (0, 1))

    f1, f2 = ctx.map_images(two_views, "test")
    out = {"alignment": float(evaluation.alignment(f1, f2))}
    if options["plot"] and ctx.workdir is not None:
        path = ctx.workdir / "similarities.png"
        pos, neg = evaluation.positive_negative_similarities(f1, f2)
        evaluation.similarity_histograms(pos, neg, path, title="learned features, two views per test image")
        out["similarity_histograms"] = path.name  # beside eval.json
    return {"learned": out}


def _format_view_geometry(results: dict) -> list[str]:
    learned = results.get("learned", {})
    if "alignment" not in learned:
        return []
    return [f"learned view alignment {learned['alignment']:.3f}" + (
        f"; similarity histograms in {learned['similarity_histograms']}" if "similarity_histograms" in learned
        else "")]


VIEW_GEOMETRY = register_evaluator(Evaluator(
    "view_geometry", _view_geometry, options={"plot": True}, families=("views",), format=_format_view_geometry))


# ------------------------------------------------------------------------------ image-text: retrieval
def _caption_embeddings(ctx: EvalContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image embeddings [N, d], embeddings of every real test caption [M, d], the image of each caption)."""
    if "captions" not in ctx._features:
        test = ctx.test
        real = np.arange(test["tokens"].shape[1])[None, :] < test["num_captions"][:, None]  # [N, K]
        image_emb, text_emb = ctx.embed_images("test"), ctx.embed_texts(test["tokens"][real])
        ctx._features["captions"] = (image_emb, text_emb, np.nonzero(real)[0])
    return ctx._features["captions"]


def _retrieval(ctx: EvalContext, options: dict) -> dict:
    image_emb, text_emb, text_to_image = _caption_embeddings(ctx)
    ks = tuple(k for k in RECALL_KS if k <= min(len(image_emb), len(text_emb)))  # a tiny test split has < 10
    results = {"num_train": len(ctx.train), "num_test": int(len(image_emb)),
               "num_test_captions": int(len(text_emb)),
               "retrieval": evaluation.image_text_retrieval(image_emb, text_emb, text_to_image=text_to_image, ks=ks)}
    if ctx.classnames:
        # A caption is a hit for any image of the class it names: the best the captions can tell apart.
        class_level = evaluation.retrieval_recall(text_emb, image_emb, query_ids=ctx.test["label"][text_to_image],
                                                  key_ids=ctx.test["label"], ks=ks)
        results["retrieval"].update({f"text_to_image_class/{k}": v for k, v in class_level.items()})
    return results


def _format_retrieval(results: dict) -> list[str]:
    r = results["retrieval"]
    rows = [f"{'retrieval':<22} {'R@1':>7} {'R@5':>7} {'R@10':>7}"]
    for direction in ("image_to_text", "text_to_image", "text_to_image_class"):
        if f"{direction}/recall@1" in r:
            rows.append(f"{direction:<22} " + " ".join(
                f"{100 * r[f'{direction}/recall@{k}']:>6.2f}%" if f"{direction}/recall@{k}" in r else f"{'-':>7}"
                for k in RECALL_KS))
    rows.append(f"(train {results['num_train']} / test {results['num_test']} images, "
                f"{results['num_test_captions']} test captions)")
    return rows


RETRIEVAL = register_evaluator(Evaluator("retrieval", _retrieval, families=("image_text",),
                                         format=_format_retrieval))


# ----------------------------------------------------------------------------- image-text: zero-shot
def _zero_shot(ctx: EvalContext, options: dict) -> dict:
    if not ctx.classnames:
        return {}
    image_emb, _, _ = _caption_embeddings(ctx)
    templates = list(options["templates"])
    class_emb = evaluation.class_embeddings_from_templates(
        lambda prompts: ctx.embed_texts(ctx.tokenizer.encode(prompts)), ctx.classnames, templates)
    return {"zero_shot": evaluation.zero_shot_classify(image_emb, class_emb, ctx.test["label"]),
            "num_templates": len(templates)}


def _check_templates(options, config) -> None:
    templates = tuple(options["templates"])
    no_slot = [t for t in templates if CLASS_SLOT not in t]
    if not templates or no_slot:
        raise ValueError(f"config.evals.zero_shot.templates must each contain the class slot {CLASS_SLOT!r}; "
                         f"these do not: {no_slot[:3]!r}" if no_slot else "config.evals.zero_shot.templates is empty")


def _format_zero_shot(results: dict) -> list[str]:
    if "zero_shot" not in results:
        return []
    return [f"zero-shot top-1 ({results['num_templates']} templates): {100 * results['zero_shot']:.2f}%"]


ZERO_SHOT = register_evaluator(Evaluator("zero_shot", _zero_shot, options={"templates": ()},
                                         families=("image_text",), format=_format_zero_shot,
                                         check=_check_templates))


def make_dual_embed(graphdef):
    """`embed(params, model_state, images, tokens)`: a dual encoder's image (tokens None) or text embeddings."""

    @jax.jit
    def embed(params, model_state, images, tokens):
        model = nnx.merge(graphdef, params, model_state)
        return model.embed_image(images) if images is not None else model.embed_text(tokens)

    return embed
