"""BYOL and SimSiam: a predictor on the online projections regresses the other view's target projection.

| name    | paper                  | online branch   | target branch          | loss                        |
|---------|------------------------|-----------------|------------------------|-----------------------------|
| byol    | Grill et al. 2020      | q(g(f(x_v)))    | EMA g(f(x_v)), no grad | 2 - 2cos(q_1, t_2) + (1<->2)|
| simsiam | Chen & He 2021         | q(g(f(x_v)))    | stop_grad g(f(x_v))    | -(cos(p_1,z_2)+cos(p_2,z_1))/2 |

The predictor is an MLP (`model.predictor_hidden`) or, with `method.directpred.enabled`, DirectPred's closed form
(Tian et al. 2021): W = U diag(p) U^T from the EMA correlation F of the online projections, updated with
this batch before W is formed; W gets no gradient, and F is the method's state.
"""

from __future__ import annotations

from contrastive import checks, losses
from contrastive.methods.base import ROWS, Method, Needs, encode_views, flatten_views
from contrastive.models import directpred
from contrastive.train.config import ConfigError


class BootstrapMethod(Method):
    nonfinite_hint = "Lower optimizer.lr or enable optimizer.grad_clip_norm."

    def __init__(self, name: str, description: str, loss_fn, *, target: bool):
        self.name, self.description, self.loss_fn = name, description, loss_fn
        self.needs = Needs(views=2, target=target, predictor=True)

    def default_settings(self) -> dict:
        # DirectPred (Tian et al. 2021): F <- rho F + (1 - rho) E[f f^T]; p_j = sqrt(lambda_j / max lambda) + eps.
        return {**super().default_settings(), "directpred": {"enabled": False, "rho": 0.3, "eps": 0.1}}

    def check(self, config, devices: int) -> None:
        super().check(config, devices)
        dp = self.settings(config)["directpred"]
        if dp["enabled"]:
            try:
                checks.check_fields(dp, "method.directpred.", {"rho": checks.BELOW_ONE, "eps": checks.NON_NEGATIVE})
            except ValueError as e:
                raise ConfigError(str(e)) from None

    def init_state(self, model, params, config, rng):
        state = super().init_state(model, params, config, rng)
        if self.settings(config)["directpred"]["enabled"]:
            state["correlation"] = directpred.init_correlation(model.projection_dim)
        return state

    def forward(self, ctx, model, target, state, views, batch, key):
        loss = ctx.loss
        apply = ctx.on_mesh(lambda p, t: loss(p[:, 0], p[:, 1], t[:, 0], t[:, 1], axis_name="data"), ROWS, ROWS)
        z = encode_views(model, views, ctx.config)  # [B, V, D]
        out = {}
        dp = self.settings(ctx.config)["directpred"]
        if dp["enabled"]:
            out["correlation"] = directpred.update_correlation(state["correlation"], flatten_views(z), rho=dp["rho"])
            p = z @ directpred.predictor_weights(out["correlation"], eps=dp["eps"])
        else:
            p = encode_views(model.predict, z, ctx.config)
        # SimSiam: the loss stops the gradient into z
        t = encode_views(target, views, ctx.config) if target is not None else z
        return (*apply(p, t), out)

    def update_state(self, ctx, state, out, params, step):
        state, metrics = super().update_state(ctx, state, out, params, step)
        if "correlation" in out:
            state = {**state, "correlation": out["correlation"]}
        return state, metrics


BYOL = BootstrapMethod("byol", "BYOL: EMA target + predictor", losses.byol, target=True)
SIMSIAM = BootstrapMethod("simsiam", "SimSiam: stop-gradient + predictor", losses.simsiam, target=False)
