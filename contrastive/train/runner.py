"""The training runner: config -> data -> jitted steps -> checkpoints and metrics -> final evaluation.

Sections: (1) check the config before any compute, (2) build data, model, optimizer and state for the
loss's family (views: `make_train_step`; image-text: `contrastive.train.image_text`),
(3) resume from the newest readable checkpoint, (4) train with a progress bar, logging and checkpointing,
stopping cleanly on SIGTERM/SIGINT and on a non-finite loss, (5) evaluate the frozen features.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
import time

import jax
from tqdm import tqdm

from contrastive import checks
from contrastive.data import pipeline
from contrastive.data.augment import AugmentConfig
from contrastive.data.datasets import get_dataset
from contrastive.methods import Context, Method
from contrastive.models.dual import lock_image_tower
from contrastive.models.encoders import build_model, mixing_modules
from contrastive.models.encoders import check as check_model
from contrastive.parallel.mesh import check_global_batch, make_mesh
from contrastive.parallel.sharding import LAYOUTS
from contrastive.train import eval_data, evaluators, image_text
from contrastive.train.checkpoint import Checkpointer, abstract_like, check_workdir_config, hold_workdir
from contrastive.train.config import ConfigError, flatten
from contrastive.train.metrics_writer import MetricsWriter, tensorboard_dir, write_tensorboard_scalars
from contrastive.train.objectives import DEFAULT_NONFINITE_HINT, loss_family, make_image_text_objective, view_method
from contrastive.train.optim import build_optimizer, learning_rate_schedule
from contrastive.train.step import init_state, make_encode_fn, make_train_step, state_shardings
from contrastive.train.stop import StopRequest


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""


class Interrupted(RuntimeError):
    """SIGTERM or SIGINT: a checkpoint was saved, and the same command resumes."""


@dataclasses.dataclass
class Setup:
    """Everything built from a checked config, before any compute."""

    mesh: jax.sharding.Mesh
    augment: AugmentConfig
    objective: object
    tx: object
    family: str = "views"  # views | image_text, from loss.name
    method: Method | None = None  # views: what the loss needs besides the projections
    evals: list = dataclasses.field(default_factory=list)  # (Evaluator, options) of config.evals, in order


@dataclasses.dataclass
class Built:
    """What a family builds from the config: the runner trains and evaluates it the same way for all."""

    train_source: object
    keys: tuple[str, ...]  # batch fields the step reads
    graphdef: object
    state: object
    train_step: object
    eval_context: object  # state -> evaluators.EvalContext


RULES = {"seed": checks.NON_NEGATIVE, "num_steps": checks.POSITIVE, "log_every": checks.POSITIVE,
         "grad_cache_chunks": checks.NON_NEGATIVE, "stop_grace_s": checks.POSITIVE,
         "sharding": checks.one_of(LAYOUTS)}
CHECKPOINT_RULES = {"every_steps": checks.POSITIVE, "keep": checks.POSITIVE}
EVAL_RULES = {"batch_size": checks.POSITIVE}


def _check_ranges(config) -> None:
    checks.check_fields(config, "", RULES)
    checks.check_fields(config.checkpoint, "checkpoint.", CHECKPOINT_RULES)
    checks.check_fields(config.eval, "eval.", EVAL_RULES)
    checks.check_fields(config.data, "data.", pipeline.RULES)
    check_model(config.model)


def _check_directory(key: str, path: str) -> None:
    """`path` is a folder or can be made one (an unusable path fails here, not after a minute of work)."""
    folder = pathlib.Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"config.{key}={path!r} cannot be used as a folder: {e.strerror or e}") from None


def check_config(config) -> Setup:
    """Every check that needs no data or compute; raises ConfigError naming the problem."""
    try:
        _check_ranges(config)
        mesh = make_mesh(config.num_devices)
        check_global_batch(config.batch_size, mesh)
        augment = AugmentConfig(**config.augment)
        tx = build_optimizer(config.optimizer, config.num_steps)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _check_directory("data.data_dir", config.data.data_dir)
    if config.compilation_cache_dir:
        _check_directory("compilation_cache_dir", config.compilation_cache_dir)
    family = loss_family(config.loss.name)
    method = None
    if family == "image_text":
        image_text.check(config, augment)
        objective = make_image_text_objective(config.loss)
        if config.model.lit.lock_image:
            tx = lock_image_tower(tx)
    else:
        if get_dataset(config.data.name).family == "image_text":
            raise ConfigError(f"data.name={config.data.name!r} is image-text data, but loss.name="
                              f"{config.loss.name!r} is a view-based loss; use one of clip, siglip, infoloob")
        method = view_method(config.loss.name)
        method.check(config, mesh.devices.size)
        objective = method.bound_loss(config)
    _check_grad_cache(config, mesh, augment, method)
    return Setup(mesh=mesh, augment=augment, objective=objective, tx=tx, family=family, method=method,
                 evals=evaluators.entries(config, family))


def _check_grad_cache(config, mesh, augment, method: Method | None) -> None:
    chunks = config.grad_cache_chunks
    if chunks == 0:
        return
    rows = config.batch_size // mesh.devices.size * augment.num_views
    if method is None or not method.grad_cache:
        raise ConfigError(f"grad_cache_chunks={chunks}: GradCache is wired for the contrastive view-based losses "
                          f"only, not loss.name={config.loss.name!r}")
    if chunks < 0 or rows % chunks:
        raise ConfigError(f"grad_cache_chunks={chunks} must divide each device's {rows} encoded rows "
                          f"(batch_size / devices x augment.num_views)")


def _check_grad_cache_model(config, model) -> None:
    """GradCache encodes sub-batches apart: refuse a built model with a layer that mixes examples."""
    mixing = mixing_modules(model)
    if config.grad_cache_chunks and mixing:
        raise ConfigError(f"grad_cache_chunks={config.grad_cache_chunks} needs a model that does not mix examples; "
                          f"these layers do: {', '.join(mixing[:4])} (BatchNorm: its statistics would be per "
                          "sub-batch; e.g. model.head_norm='batch' does)")


def open_split(config, split: str, key: str | None = None) -> pipeline.ImageExamples:
    """The examples of `split` of `config.data` (fixed-shape images, label, index), read on access;
    ConfigError naming the fields (`key`: the field that chose `split`) when it cannot be read."""
    d = config.data
    key = key or ("train_split" if split == d.train_split else "test_split" if split == d.test_split else "split")
    try:
        raw = pipeline.data_source(d.name, split, str(pathlib.Path(d.data_dir).expanduser()))
    except Exception as e:  # noqa: BLE001 - TFDS raises many kinds; each means this data cannot be read
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"config.data.name={d.name!r}, config.data.{key}={split!r} cannot be read from "
                          f"config.data.data_dir={d.data_dir!r}: {reason}") from None
    try:
        return pipeline.ImageExamples(raw, get_dataset(d.name), split, tuple(d.image_size) or None)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _in_memory(config, source):
    """`source` read into memory with `data.in_memory` (by `data.num_workers` threads), else itself."""
    if not config.data.in_memory:
        return source
    arrays = pipeline.read_all(source, num_workers=pipeline.worker_count(config.data.num_workers))
    return pipeline.InMemorySource(arrays, labelled=source.labelled)


def load_split(config, split: str, key: str | None = None):
    """`open_split`, read into memory with `data.in_memory`."""
    return _in_memory(config, open_split(config, split, key))


def _check_labels(config, setup, train_source, probe_source, test_source) -> None:
    """Refuse a method that needs labels (SupCon) on an unlabelled train split, and probes (their
    classifiers are fitted on the probe split's labels and scored on the test split's) on an unlabelled
    split: before anything is read into memory or computed."""
    d = config.data
    if setup.method.needs.labels and not train_source.labelled:
        raise ConfigError(f"loss.name={config.loss.name!r} needs labels, but config.data.train_split="
                          f"{d.train_split!r} of data.name={d.name!r} has none")
    runs = lambda options: options["every_steps"] or (options["at_end"] and config.eval.at_end)
    if not any(evaluator.name == "probes" and runs(options) for evaluator, options in setup.evals):
        return
    if not probe_source.labelled:
        raise ConfigError(f"config.evals.probes needs labels, but the split it is fitted on, "
                          f"{d.probe_train_split or d.train_split!r} of data.name={d.name!r}, has none "
                          f"(config.data.probe_train_split={d.probe_train_split!r}; '' uses data.train_split): "
                          "set config.data.probe_train_split to a labelled split, e.g. 'train', or remove evals.probes")
    if not test_source.labelled:
        raise ConfigError(f"config.evals.probes needs labels, but config.data.test_split={d.test_split!r} of "
                          f"data.name={d.name!r} has none: set it to a labelled split, or remove evals.probes")


def _to_host(metrics: dict) -> dict:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def train_and_evaluate(config, workdir: str | pathlib.Path) -> dict:
    """Train `config` in `workdir` (resuming if it has checkpoints), then evaluate; returns eval.json."""
    workdir = pathlib.Path(workdir)
    # (1) Check everything that needs no data, then (2) build data, model, optimizer and state and trace
    # the train step, all before the workdir is created or changed: a bad config leaves it untouched.
    setup = check_config(config)
    if config.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(config.compilation_cache_dir).expanduser()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    if setup.family == "image_text":
        built = image_text.build(config, setup, Built)
    else:
        built = _build_views(config, setup, workdir)
    try:
        batches = pipeline.GlobalBatches(built.train_source, global_batch_size=config.batch_size,
                                         seed=config.seed, mesh=setup.mesh, keys=built.keys,
                                         prefetch=config.data.prefetch,
                                         num_workers=pipeline.worker_count(config.data.num_workers))
    except ValueError as e:
        raise ConfigError(f"config.batch_size: {e}") from None
    shardings = state_shardings(built.state, setup.mesh, config.sharding)
    _trace_step(built.train_step, abstract_like(built.state, shardings), batches)
    # One job per workdir: a second one is refused here, having changed nothing and run no collective.
    with hold_workdir(workdir):
        state = jax.device_put(built.state, shardings)
        return _train_held(config, workdir, setup, built, batches, state)


def _train_held(config, workdir: pathlib.Path, setup: Setup, built: Built, batches, state) -> dict:
    """(3) Resume, (4) train and (5) evaluate, in a workdir this job holds."""
    train_step = built.train_step
    check_workdir_config(workdir, config)
    checkpointer = Checkpointer(workdir, every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep)

    # (3) Resume.
    restored = checkpointer.restore_latest(abstract_like(state))
    primary = jax.process_index() == 0  # writes every file but the checkpoints, and prints
    if restored is not None:
        state, _, step = restored
    if restored is not None and primary:
        print(f"resumed from the checkpoint at step {step} in {workdir / 'checkpoints'}", file=sys.stderr)
    start = int(state.step)
    writer = MetricsWriter(workdir / "metrics.jsonl", start, enabled=primary,
                           tensorboard_dir=tensorboard_dir(config, workdir, "train"))
    meta = {"config": flatten(config), "global_batch_size": config.batch_size}

    # (4) Train.
    try:
        periodic = _PeriodicEval(setup.evals, built.eval_context, workdir / "eval_history.jsonl", start, primary,
                                 tensorboard_dir(config, workdir, "eval"))
        hint = setup.method.nonfinite_hint if setup.method is not None else ""
        state = _train_loop(config, state, train_step, batches, checkpointer, writer, meta, start, periodic, hint)
    finally:
        checkpointer.wait()

    # (5) Evaluate.
    at_end = [(e, options) for e, options in setup.evals if options["at_end"]]
    if not config.eval.at_end or not at_end:
        checkpointer.close()
        return {"step": int(state.step)}
    results = evaluators.run_all(built.eval_context(state), at_end)
    results["step"] = int(state.step)
    if primary:
        (workdir / "eval.json").write_text(json.dumps(results, indent=2))
        write_tensorboard_scalars(tensorboard_dir(config, workdir, "eval"), results["step"], results)
        print(evaluators.format_results(at_end, results))
    checkpointer.close()
    return results


def _trace_step(train_step, abstract_state, batches) -> None:
    """Trace (not compile, not run) the train step on the shapes of the first batch, so that every check
    the losses and the augmentation make at trace time refuses a bad config before the workdir is touched."""
    local = batches.local_batch(0)
    abstract = {k: jax.ShapeDtypeStruct((batches.global_batch_size, *v.shape[1:]), v.dtype, sharding=batches.sharding)
                for k, v in local.items()}
    try:
        train_step.trace(abstract_state, abstract)
    except ValueError as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"the train step cannot be built from this config: {reason}") from None


def _build_views(config, setup, workdir: pathlib.Path) -> Built:
    d = config.data
    train_source, test_source = open_split(config, d.train_split), open_split(config, d.test_split)
    own_probe_split = d.probe_train_split not in ("", d.train_split)
    probe_source = open_split(config, d.probe_train_split, "probe_train_split") if own_probe_split else train_source
    _check_labels(config, setup, train_source, probe_source, test_source)
    train_source, test_source = _in_memory(config, train_source), _in_memory(config, test_source)
    probe_source = _in_memory(config, probe_source) if own_probe_split else train_source
    image_shape = tuple(train_source[0]["image"].shape)
    try:
        setup.augment.check_image(image_shape)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    evaluators.check_sizes(setup.evals, config, evaluators.SplitSizes(len(probe_source), len(test_source), image_shape))
    try:  # an encoder's checks against the image shape (e.g. a ViT patch size that does not divide it)
        model = build_model(config.model, image_shape, seed=config.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _check_grad_cache_model(config, model)
    graphdef, state = init_state(model, setup.tx, config.seed, method=setup.method, config=config,
                                 num_examples=len(train_source))
    pixel_max = pipeline.max_pixel_value(config.data.name)
    ctx = Context(config=config, mesh=setup.mesh, loss=setup.objective)
    train_step = make_train_step(graphdef, setup.tx, setup.method, ctx, setup.augment, max_pixel_value=pixel_max,
                                 grad_cache_chunks=config.grad_cache_chunks,
                                 state_sharding=state_shardings(state, setup.mesh, config.sharding))

    encode = make_encode_fn(graphdef)
    # Evaluation streams each split's images from its source; its labels are read once and kept.
    stream = lambda source: eval_data.EvalSplit(source, small_keys=("label",), batch_size=config.eval.batch_size,
                                                num_workers=pipeline.worker_count(d.num_workers), mesh=setup.mesh)
    probe_split = stream(probe_source)
    test_split = stream(test_source)

    def eval_context(state):
        return evaluators.EvalContext(
            config=config, graphdef=graphdef, state=state, family="views", pixel_max=pixel_max,
            train=probe_split, load_test=lambda: test_split,
            build_model=lambda: build_model(config.model, image_shape, seed=config.seed), encode=encode,
            workdir=workdir if jax.process_index() == 0 else None)  # plots: process 0 only

    keys = ("image", "label", *(("index",) if setup.method.needs.index else ()))
    return Built(train_source=train_source, keys=keys, graphdef=graphdef, state=state,
                 train_step=train_step, eval_context=eval_context)


class _PeriodicEval:
    """Each `config.evals` entry every its `every_steps` steps (0: never), one JSON line per step at which
    any is due in eval_history.jsonl."""

    def __init__(self, evals, eval_context, path: pathlib.Path, start_step: int, primary: bool = True,
                 tensorboard: pathlib.Path | None = None):
        self.evals = [(e, options) for e, options in evals if options["every_steps"]]
        self.eval_context, self.path, self.primary = eval_context, path, primary
        # Evaluations after `start_step` belong to steps this run recomputes: drop them, as in metrics.jsonl.
        self.writer = MetricsWriter(path, start_step + 1, enabled=primary, tensorboard_dir=tensorboard) \
            if self.evals else None

    def __call__(self, done: int, num_steps: int, state) -> None:
        due = [(e, options) for e, options in self.evals if done % options["every_steps"] == 0]
        if not due or done == num_steps:  # the end has its own eval
            return
        results = {"step": done, **evaluators.run_all(self.eval_context(state), due)}
        self.writer.write(results)
        if self.primary:
            tqdm.write(f"eval at step {done}: written to {self.path}", file=sys.stderr)


def _train_loop(config, state, train_step, batches, checkpointer, writer, meta, start, periodic, hint=""):
    num_steps = config.num_steps
    if start >= num_steps:
        return state
    schedule_lr = learning_rate_schedule(config.optimizer, num_steps)
    pending: list[tuple[int, dict]] = []
    bar = tqdm(total=num_steps, initial=start, disable=not config.progress or jax.process_index() != 0, unit="step",
               dynamic_ncols=True, mininterval=0.5, file=sys.stderr)
    last_time, last_step = time.perf_counter(), start
    data = batches.iterate(start)
    with StopRequest(config.stop_grace_s, checkpointer.describe_newest) as stop:
        for step in range(start, num_steps):
            state, metrics = train_step(state, next(data))
            pending.append((step, metrics))
            done = step + 1
            # Many processes agree on a stop at the steps where they sync anyway, so all save the same step.
            stopping = stop.agreed(done % config.log_every == 0 or checkpointer.should_save(done) or done == num_steps)
            save_now = checkpointer.should_save(done) or done == num_steps or stopping
            if done % config.log_every == 0 or save_now:
                # Fetching the metrics is the only host sync; do it only when logging or saving.
                now = time.perf_counter()
                rate = (done - last_step) * config.batch_size / max(now - last_time, 1e-9)
                last_time, last_step = now, done
                host = [(s, _to_host(m)) for s, m in pending]
                pending.clear()
                stop.step_finished()
                for s, m in host:
                    if s + 1 == done or (s + 1) % config.log_every == 0:
                        writer.write({"step": s, **m, "lr": float(schedule_lr(s)), "examples_per_s": rate})
                bad = [s for s, m in host if not math.isfinite(m["loss"])]
                if bad:
                    bar.close()
                    saved = checkpointer.manager.latest_step()
                    raise NonFiniteLossError(
                        f"non-finite loss at step {bad[0]}; training stopped without saving that state. "
                        f"The last good checkpoint is step {saved} in {checkpointer.manager.directory}. "
                        + (hint or DEFAULT_NONFINITE_HINT))
                bar.set_postfix(loss=f"{host[-1][1]['loss']:.4f}", ex_per_s=f"{rate:,.0f}", refresh=False)
            bar.update(1)
            if save_now:
                checkpointer.save(done, state, {**meta, "data_position": done}, force=True)
                stop.step_finished()  # the save is under way: progress, not a hang
            periodic(done, num_steps, state)
            if stopping:
                bar.close()
                checkpointer.wait()
                raise Interrupted(f"stopped by {stop.signal} after step {done}; checkpoint saved in "
                                  f"{checkpointer.manager.directory}. Run the same command to resume.")
    bar.close()
    return state
