"""Optimizers and learning-rate schedules from the config, all from optax."""

from __future__ import annotations

import jax
import optax

from contrastive import checks

OPTIMIZERS = ("adamw", "lars", "sgd")
SCHEDULES = ("cosine", "constant")
RULES = {"name": checks.one_of(OPTIMIZERS), "schedule": checks.one_of(SCHEDULES), "lr": checks.POSITIVE,
         "weight_decay": checks.NON_NEGATIVE, "b1": checks.BELOW_ONE, "b2": checks.BELOW_ONE,
         "momentum": checks.BELOW_ONE, "trust_coefficient": checks.POSITIVE, "warmup_steps": checks.NON_NEGATIVE,
         "grad_clip_norm": checks.NON_NEGATIVE}


def check(cfg, num_steps: int) -> None:
    """Raise ValueError naming the first field of `config.optimizer` out of its range."""
    checks.check_fields(cfg, "optimizer.", RULES)
    if cfg.warmup_steps >= num_steps:
        raise ValueError(f"config.optimizer.warmup_steps={cfg.warmup_steps} must be below num_steps={num_steps} "
                         "(the learning rate would never reach its peak)")


def learning_rate_schedule(cfg, num_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `cfg.lr` over `cfg.warmup_steps`, then cosine decay to 0 (or constant)."""
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, cfg.lr, warmup_steps=cfg.warmup_steps, decay_steps=max(num_steps, cfg.warmup_steps + 1))
    if cfg.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), optax.constant_schedule(cfg.lr)],
            [cfg.warmup_steps])
    raise ValueError(f"optimizer.schedule={cfg.schedule!r} is not one of {SCHEDULES}")


def _decay_mask(params):
    """Weight decay (and LARS adaptation) on weight matrices and kernels only, not biases or norms."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def build_optimizer(cfg, num_steps: int) -> optax.GradientTransformation:
    """The optimizer `config.optimizer` describes.

    LARS (You et al., 2017) is SimCLR's large-batch optimizer; biases and normalisation parameters are
    excluded from both its weight decay and its trust ratio, as in SimCLR's code.
    """
    check(cfg, num_steps)
    schedule = learning_rate_schedule(cfg, num_steps)
    if cfg.name == "adamw":
        tx = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=_decay_mask)
    elif cfg.name == "lars":
        tx = optax.lars(schedule, weight_decay=cfg.weight_decay, weight_decay_mask=_decay_mask,
                        trust_coefficient=cfg.trust_coefficient, trust_ratio_mask=_decay_mask,
                        momentum=cfg.momentum)
    elif cfg.name == "sgd":
        tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=_decay_mask),
                         optax.sgd(schedule, momentum=cfg.momentum))
    else:
        raise ValueError(f"optimizer.name={cfg.name!r} is not one of {OPTIMIZERS}")
    if cfg.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
    return tx
