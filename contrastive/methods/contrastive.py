"""The one-encoder contrastive losses: SimCLR's NT-Xent, DCL/DCLW and SupCon.

All views of an example go through the online encoder and head; the loss sees the projections
z [b, V, D] (and, for SupCon, the labels) on each device and gathers the global negatives itself. No
state beyond the parameters; GradCache applies (the loss sees only the projections).

| name    | paper                          | loss                                  |
|---------|--------------------------------|---------------------------------------|
| nt_xent | Chen et al. 2020, SimCLR       | `contrastive.losses.nt_xent(z1, z2)`  |
| dcl     | Yeh et al. 2022, DCL / DCLW    | `contrastive.losses.dcl(z1, z2)`      |
| supcon  | Khosla et al. 2020, SupCon     | `contrastive.losses.supcon(z, labels)`|
"""

from __future__ import annotations

from contrastive import losses
from contrastive.methods.base import ROWS, Method, Needs, encode_views


class ContrastiveMethod(Method):
    grad_cache = True

    def __init__(self, name: str, description: str, loss_fn, *, with_labels: bool):
        self.name, self.description, self.loss_fn = name, description, loss_fn
        self.needs = Needs(views=None if with_labels else 2, labels=with_labels)

    def objective(self, ctx):
        """`objective(z [b, V, D], labels [b], *, axis_name)`: the loss of this device's projections."""
        loss = ctx.loss
        if self.needs.labels:
            return lambda z, labels, *, axis_name: loss(z, labels, axis_name=axis_name)
        return lambda z, labels, *, axis_name: loss(z[:, 0], z[:, 1], axis_name=axis_name)

    def forward(self, ctx, model, target, state, views, batch, key):
        objective = self.objective(ctx)
        apply = ctx.on_mesh(lambda z, labels: objective(z, labels, axis_name="data"), ROWS, ROWS)
        return (*apply(encode_views(model, views, ctx.config), batch["label"]), {})


NT_XENT = ContrastiveMethod("nt_xent", "SimCLR / NT-Xent", losses.nt_xent, with_labels=False)
DCL = ContrastiveMethod("dcl", "DCL / DCLW: decoupled contrastive loss", losses.dcl, with_labels=False)
SUPCON = ContrastiveMethod("supcon", "SupCon: supervised contrastive", losses.supcon, with_labels=True)
