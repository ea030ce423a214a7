"""W-MSE (Ermolov et al. 2021): whiten sub-batches of the projections, then the MSE of normalised positives.

All V >= 2 views go through the online encoder and head; `contrastive.losses.wmse` groups the rows with the
step's loss key and whitens each group (see there for `local` and `global` whitening).
"""

from __future__ import annotations

import inspect

from contrastive import losses
from contrastive.losses.wmse import check_grouping
from contrastive.methods.base import ROWS, SAME, Method, Needs, encode_views
from contrastive.train.config import ConfigError


class WMSE(Method):
    name = "wmse"
    description = "W-MSE: whitened MSE"
    needs = Needs(views=None, key=True)
    loss_fn = staticmethod(losses.wmse)
    nonfinite_hint = ("W-MSE: a whitening covariance became singular (the projections' rank fell below "
                      "model.projection_dim, e.g. dead ReLU units of a head no wider than it); set loss.eps > 0 "
                      "(e.g. 1e-3), or lower model.projection_dim.")

    def check(self, config, devices: int) -> None:
        super().check(config, devices)
        defaults = {k: p.default for k, p in inspect.signature(losses.wmse).parameters.items()}
        bound = {**defaults, **self.loss_kwargs(config)}
        shape = (config.batch_size // devices, config.augment.num_views, config.model.projection_dim)
        try:
            check_grouping(shape, bound["w_size"], bound["whitening"], devices, bound["eps"])
        except ValueError as e:
            raise ConfigError(f"config.loss: {e}") from None

    def forward(self, ctx, model, target, state, views, batch, key):
        loss = ctx.loss
        apply = ctx.on_mesh(lambda z, k: loss(z, key=k, axis_name="data"), ROWS, SAME)
        return (*apply(encode_views(model, views, ctx.config), key), {})


WMSE_METHOD = WMSE()
