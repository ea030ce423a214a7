"""View-based methods, one object each, found by name (`config.loss.name`) in `REGISTRY`.

`register(method)` adds one (a user's own method registers from its own file; see the README section
"Adding a method, a loss, an encoder, a dataset, an evaluator"). The protocol is in `base`.
"""

from __future__ import annotations

from contrastive.methods.base import (
    Context,
    Method,
    Needs,
    encode_views,
    flatten_views,
    per_view,
    read_rows,
    write_rows,
)

REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add `method` under `method.name` (replacing one of that name) and return it."""
    if not method.name:
        raise ValueError("a method needs a name")
    REGISTRY[method.name] = method
    return method


def get(name: str) -> Method:
    if name not in REGISTRY:
        raise KeyError(name)
    return REGISTRY[name]


from contrastive.methods import bootstrap, contrastive, moco, wmse  # noqa: E402 - they register below

for _method in (contrastive.NT_XENT, contrastive.DCL, contrastive.SUPCON, bootstrap.BYOL, bootstrap.SIMSIAM,
                wmse.WMSE_METHOD, moco.MOCO):
    register(_method)

__all__ = ["REGISTRY", "Context", "Method", "Needs", "encode_views", "flatten_views", "get", "per_view", "read_rows",
           "register", "write_rows"]
