"""What the view-based train step computes for each method, beyond "encode the views, apply the loss".

A `Method` says what a loss needs: an EMA target network (BYOL, MoCo), a predictor on the projections
(BYOL, SimSiam: an MLP, or DirectPred's closed form), a key queue (MoCo). `make_forward` returns
`forward(model, target, state, views, labels, key) -> (loss, metrics, out)`: the model is the online
network (differentiated), `target` the EMA network or None, `views` the augmented global batch
[B, V, H, W, C]. The encoders run under `jax.jit` on the global batch (so BatchNorm statistics are global);
the loss runs under `jax.shard_map` with `axis_name="data"`. `out` holds what the step writes back into the
state after the update: the keys to enqueue, DirectPred's running correlation.

| method  | online branch             | target branch            | loss                              |
|---------|---------------------------|--------------------------|-----------------------------------|
| SimCLR… | g(f(x_v)), all views      | -                        | nt_xent / dcl / supcon            |
| BYOL    | q(g(f(x_v)))              | EMA g(f(x_v)), no grad   | 2 - 2cos(q_1, t_2) + (1 <-> 2)    |
| SimSiam | q(g(f(x_v)))              | stop_grad g(f(x_v))      | -(cos(p_1, z_2) + cos(p_2, z_1))/2 |
| W-MSE   | g(f(x_v)), V >= 2 views   | -                        | MSE of whitened, normalised pairs |
| MoCo v2 | g(f(x_1)) queries         | EMA g(f(x_2)) keys       | InfoNCE over queue + batch keys   |

With DirectPred (Tian et al. 2021) the predictor of BYOL/SimSiam is W = U diag(p) U^T from the EMA
correlation of the online projections, updated with this batch before W is formed; W gets no gradient.
"""

from __future__ import annotations

import dataclasses

import jax
from jax.sharding import PartitionSpec as P

from contrastive.models import directpred


@dataclasses.dataclass(frozen=True)
class Method:
    views: int | None  # views the loss needs; None: any number >= 2
    kind: str  # contrastive | bootstrap | whitening | queue
    target: bool = False  # an EMA target network
    predictor: bool = False  # a predictor on the online projections
    keyed: bool = False  # the loss takes a PRNG `key` (W-MSE permutations, MoCHi/FT sampling)
    nonfinite_hint: str = ""  # what to change when this method's loss becomes non-finite


DEFAULT_NONFINITE_HINT = "Lower optimizer.lr, enable optimizer.grad_clip_norm, or raise loss.temperature."


METHODS = {
    "nt_xent": Method(2, "contrastive"),
    "dcl": Method(2, "contrastive"),
    "supcon": Method(None, "contrastive"),
    "byol": Method(2, "bootstrap", target=True, predictor=True),
    "simsiam": Method(2, "bootstrap", predictor=True),
    "wmse": Method(None, "whitening", keyed=True, nonfinite_hint=(
        "W-MSE: a whitening covariance became singular (the projections' rank fell below model.projection_dim, "
        "e.g. dead ReLU units of a head no wider than it); set loss.eps > 0 (e.g. 1e-3), or lower "
        "model.projection_dim.")),
    "moco": Method(2, "queue", target=True, keyed=True),
}


def flatten_views(views: jax.Array) -> jax.Array:
    """[B, V, ...] -> [B * V, ...], example-major (the rows of one example's views are adjacent)."""
    return views.reshape(views.shape[0] * views.shape[1], *views.shape[2:])


def _per_view(z: jax.Array, batch: int) -> jax.Array:
    return z.reshape(batch, -1, z.shape[-1])


def make_forward(method: Method, loss, mesh: jax.sharding.Mesh, *, directpred_cfg=None):
    """`forward(model, target, state, views, labels, key) -> (loss, metrics, out)` for `method`.

    `loss` is the configured loss: for the contrastive kind an objective `(z [b, V, D], labels, *,
    axis_name)` (see `objectives`), otherwise the loss function with its config keywords bound.
    """
    def on_mesh(fn, *specs):
        return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=(P(), P()))

    rows, same = P("data"), P()
    if method.kind == "contrastive":
        apply = on_mesh(lambda z, labels: loss(z, labels, axis_name="data"), rows, rows)

        def forward(model, target, state, views, labels, key):
            return (*apply(_per_view(model(flatten_views(views)), views.shape[0]), labels), {})

    elif method.kind == "bootstrap":
        apply = on_mesh(lambda p, t: loss(p[:, 0], p[:, 1], t[:, 0], t[:, 1], axis_name="data"), rows, rows)

        def forward(model, target, state, views, labels, key):
            batch, x = views.shape[0], flatten_views(views)
            z = model(x)
            out = {}
            if directpred_cfg is not None and directpred_cfg.enabled:
                out["correlation"] = directpred.update_correlation(state.buffers["correlation"], z,
                                                                   rho=directpred_cfg.rho)
                p = z @ directpred.predictor_weights(out["correlation"], eps=directpred_cfg.eps)
            else:
                p = model.predict(z)
            t = target(x) if target is not None else z  # SimSiam: the loss stops the gradient into z
            return (*apply(_per_view(p, batch), _per_view(t, batch)), out)

    elif method.kind == "whitening":
        apply = on_mesh(lambda z, key: loss(z, key=key, axis_name="data"), rows, same)

        def forward(model, target, state, views, labels, key):
            return (*apply(_per_view(model(flatten_views(views)), views.shape[0]), key), {})

    elif method.kind == "queue":
        apply = on_mesh(lambda q, k, queue, key: loss(q, k, queue, key=key, axis_name="data"),
                        rows, rows, same, same)

        def forward(model, target, state, views, labels, key):
            keys = target(views[:, 1])
            return (*apply(model(views[:, 0]), keys, state.queue["keys"], key), {"keys": keys})

    else:
        raise ValueError(f"unknown method kind {method.kind!r}")
    return forward
