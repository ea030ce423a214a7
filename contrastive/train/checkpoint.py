"""Checkpoints with orbax: every N steps, keep the last K, resume from the newest readable one.

A workdir holds `config.json` (the config that created it) and `checkpoints/<step>/` with two items: the
train state and a small JSON `meta` (the config fingerprint and the data position). A checkpoint that
cannot be read (a crash in the middle of a write that orbax did not catch, a damaged disk) is moved to
`unreadable_checkpoints/` with a warning and the previous one is used; nothing in the workdir is ever
deleted by a failed run.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
import sys

import jax
import orbax.checkpoint as ocp

from contrastive import locks
from contrastive.parallel import coordination
from contrastive.train.config import ConfigError, flatten

LOCK_NAME = "job.lock"

# Config keys that may differ when resuming: they do not change what the state means or how it evolves
# (`sharding` only where its arrays live: orbax restores a checkpoint into either layout; `evals.` what is
# measured, so a finished run can be evaluated anew with another evaluator).
RESUMABLE_KEYS = ("num_steps", "log_every", "progress", "compilation_cache_dir", "stop_grace_s", "checkpoint.",
                  "eval.", "evals.", "data.data_dir", "sharding")


class CheckpointError(RuntimeError):
    """No checkpoint in the workdir could be restored."""


def _state_defining(flat: dict) -> dict:
    return {k: v for k, v in flat.items() if not k.startswith(RESUMABLE_KEYS)}


def check_workdir_config(workdir: pathlib.Path, config) -> None:
    """Record the config in a new workdir, or check it matches the one that wrote the checkpoints.

    Raises ConfigError naming every differing key; writes nothing in that case. Every process of a job
    checks (they all refuse alike); process 0 alone writes.
    """
    path = workdir / "config.json"
    current = flatten(config)
    has_checkpoints = any((workdir / "checkpoints").glob("[0-9]*"))
    if path.exists() and has_checkpoints:
        saved = json.loads(path.read_text())
        old, new = _state_defining(saved), _state_defining(json.loads(json.dumps(current)))
        diff = sorted(set(old) | set(new), key=str)
        diff = [k for k in diff if old.get(k, "<missing>") != new.get(k, "<missing>")]
        if diff:
            lines = "\n".join(f"  config.{k}: checkpoint has {old.get(k, '<missing>')!r}, "
                              f"this run has {new.get(k, '<missing>')!r}" for k in diff)
            raise ConfigError(f"the checkpoints in {workdir} were written by an incompatible config:\n"
                              f"{lines}\nUse a new --workdir, or the config of the checkpoints.")
    if jax.process_index() != 0:
        return
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True))
    tmp.replace(path)


@contextlib.contextmanager
def hold_workdir(workdir: pathlib.Path):
    """One job per workdir: process 0 holds `<workdir>/job.lock` while the block runs (`contrastive.locks`:
    released when the job ends or dies, so a dead job's lock is taken over at once). A second job is
    refused with ConfigError naming the holder (host, pid, start time) before it writes anything; all
    processes of a job learn process 0's answer and refuse alike. The processes of one job share a
    workdir, so only process 0 locks; two jobs on different machines exclude each other where the shared
    filesystem supports flock (NFS does)."""
    lock, held_by = locks.HeldLock(workdir / LOCK_NAME), ""
    if jax.process_index() == 0:
        try:
            lock.acquire()
        except locks.LockHeld as e:
            held_by = str(e)
    # Through the coordination service, not a collective: a refusal must not depend on gloo (coordination.py).
    held_by = coordination.broadcast_text("workdir_lock", held_by)
    if held_by:
        raise ConfigError(f"--workdir {workdir} is in use by another job ({held_by}; lock file "
                          f"{workdir / LOCK_NAME}): wait for it to end or stop it, or use another --workdir")
    try:
        yield
    finally:
        lock.release()


class Checkpointer:
    """Thin layer over `ocp.CheckpointManager` with fallback on unreadable checkpoints.

    In a multi-process job every process calls every method (orbax saves and restores collectively: each
    process writes its own shards, process 0 the metadata and the final rename); the workdir must be one
    filesystem that all processes see.
    """

    def __init__(self, workdir: pathlib.Path, *, every_steps: int, keep: int):
        self.directory = (workdir / "checkpoints").absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every_steps),
            item_names=("state", "meta"))

    def should_save(self, step: int) -> bool:
        return self.manager.should_save(step)

    def save(self, step: int, state, meta: dict, *, force: bool = False) -> bool:
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

    def restore_latest(self, abstract_state):
        """(state, meta, step) of the newest readable checkpoint, or None when there is none."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        failures = []
        for step in steps:
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 - any failure to read means: try the previous one
                reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                failures.append(f"step {step}: {type(e).__name__}: {reason}")
                kept = self._set_aside(step)
                print(f"warning: checkpoint at step {step} is unreadable ({type(e).__name__}: {reason}); "
                      f"moved it to {kept} and falling back to the previous one", file=sys.stderr)
                continue
            if failures:
                self.manager.reload()
            return restored.state, restored.meta, step
        if failures:
            raise CheckpointError("no checkpoint could be restored:\n  " + "\n  ".join(failures))
        return None

    def _set_aside(self, step: int) -> pathlib.Path:
        """Move an unreadable checkpoint out of the manager's way (so its step can be written again),
        keeping its files for inspection."""
        source = self.directory / str(step)
        target = self.directory.parent / "unreadable_checkpoints" / str(step)
        suffix = 0
        while target.exists():
            suffix += 1
            target = target.with_name(f"{step}.{suffix}")
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
        if jax.process_count() > 1:  # nobody reloads the manager before the move is done
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"contrastive_set_aside_{step}")
        return target

    def describe_newest(self) -> str:
        """The newest complete checkpoint, read from the folder names alone (no orbax call, so it is safe from
        any thread): orbax writes into a temporary folder and renames it to `<step>` once complete."""
        steps = [int(p.name) for p in self.directory.glob("*") if p.name.isdigit()] if self.directory.is_dir() else []
        if not steps:
            return f"none (no complete checkpoint in {self.directory})"
        return f"step {max(steps)} in {self.directory}"

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract_like(state, shardings=None):
    """Shapes, dtypes and shardings of `state` (the restore target), or its shapes and dtypes with
    `shardings` (a tree like `state`) for a state not yet placed."""
    if shardings is None:
        return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
