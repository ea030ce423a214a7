"""MoCo v2 (He et al. 2020; Chen et al. 2020) with MoCHi and feature transformation as loss options.

Queries are the online network's projections of view 1, keys the EMA target's of view 2. The loss is
InfoNCE over the queue and the batch's keys (`contrastive.losses.moco`); after the update, every
device's keys are written over the oldest queue entries in global row order.
"""

from __future__ import annotations

import jax

from contrastive import losses
from contrastive.methods.base import ROWS, SAME, Method, Needs
from contrastive.train import momentum
from contrastive.train.config import ConfigError


class MoCo(Method):
    name = "moco"
    description = "MoCo v2: EMA keys + queue"
    needs = Needs(views=2, target=True, queue=True, key=True)
    loss_fn = staticmethod(losses.moco)

    def default_settings(self) -> dict:
        # queue_size: past keys kept as negatives, a multiple of the global batch size.
        return {**super().default_settings(), "queue_size": 1024}

    def check(self, config, devices: int) -> None:
        super().check(config, devices)
        try:
            momentum.check_queue_size(self.settings(config)["queue_size"], config.batch_size)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def init_state(self, model, params, config, rng):
        state = super().init_state(model, params, config, rng)
        # The queue's initial keys: a stream no other draw uses.
        state["queue"] = momentum.init_queue(jax.random.fold_in(rng, 0x51), self.settings(config)["queue_size"],
                                             model.projection_dim)
        return state

    def forward(self, ctx, model, target, state, views, batch, key):
        loss = ctx.loss
        apply = ctx.on_mesh(lambda q, k, queue, kk: loss(q, k, queue, key=kk, axis_name="data"),
                            ROWS, ROWS, SAME, SAME)
        keys = target(views[:, 1])
        return (*apply(model(views[:, 0]), keys, state["queue"]["keys"], key), {"keys": keys})

    def update_state(self, ctx, state, out, params, step):
        state, metrics = super().update_state(ctx, state, out, params, step)
        return {**state, "queue": momentum.enqueue(state["queue"], out["keys"])}, metrics


MOCO = MoCo()
