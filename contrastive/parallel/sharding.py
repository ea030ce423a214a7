"""Where each array of the train state lives: replicated on every device, or split over the `data` axis (FSDP).

`config.sharding` chooses the layout of the parameters, the optimizer state and the rest of the state:

- `replicated`: every device holds a whole copy (plain data parallelism).
- `fsdp`: fully-sharded data parallelism, big_vision's `fsdp` rule: each array is split along its largest
  dimension that the `data` axis size divides (on a tie, the later dimension), so every device holds
  1 / (axis size) of it; an array of fewer than `min_size` elements, or with no dimension the axis size
  divides, stays replicated (splitting it saves little and costs a collective). Inside the jitted step,
  XLA all-gathers a parameter where the forward pass needs it whole and reduce-scatters its gradient
  back to the shards, so the optimizer updates each shard where it lives.
"""

from __future__ import annotations

import math

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from contrastive.parallel.mesh import DATA_AXIS

LAYOUTS = ("replicated", "fsdp")
FSDP_MIN_SIZE = 2**14  # elements: smaller arrays stay replicated under `fsdp`


def fsdp_spec(shape: tuple[int, ...], axis_size: int, *, axis_name: str = DATA_AXIS,
              min_size: int = FSDP_MIN_SIZE) -> P:
    """The `fsdp` rule's PartitionSpec for an array of `shape` on a mesh axis of `axis_size` devices:
    `axis_name` on its largest dimension that `axis_size` divides (ties: the later one), or P() for an
    array of fewer than `min_size` elements or without such a dimension."""
    if math.prod(shape) < min_size:
        return P()
    by_size = sorted(range(len(shape)), key=lambda i: (shape[i], i), reverse=True)
    for i in by_size:
        if shape[i] % axis_size == 0:
            return P(*([None] * i), axis_name)
    return P()


def layout_sharding(layout: str, mesh: jax.sharding.Mesh, *, min_size: int = FSDP_MIN_SIZE):
    """`array -> NamedSharding` on `mesh` for `layout` (one of LAYOUTS); leaves without a shape (Python
    scalars) are replicated."""
    if layout not in LAYOUTS:
        raise ValueError(f"sharding={layout!r} is not one of {', '.join(map(repr, LAYOUTS))}")
    replicated = NamedSharding(mesh, P())
    if layout == "replicated":
        return lambda x: replicated
    axis_size = mesh.shape[DATA_AXIS]

    def sharding_of(x) -> NamedSharding:
        shape = getattr(x, "shape", None)
        if shape is None:
            return replicated
        return NamedSharding(mesh, fsdp_spec(tuple(shape), axis_size, min_size=min_size))

    return sharding_of


def bytes_per_device(tree, device: jax.Device | None = None) -> int:
    """Bytes of the arrays of `tree` held on `device` (default: this process's first), summed over the
    shards each array keeps there."""
    device = device or jax.local_devices()[0]
    total = 0
    for x in jax.tree.leaves(tree):
        for shard in getattr(x, "addressable_shards", ()):
            if shard.device == device:
                total += shard.data.nbytes
    return total


def gathered(params, shardings, mesh: jax.sharding.Mesh):
    """`params` whole on every device for the computation that follows (an all-gather of each sharded
    array), with the gradient laid out as `shardings` (the sharded arrays' gradients are summed over the
    devices and split in one reduce-scatter, not all-reduced whole). Identity for replicated arrays.

    Without it, XLA's sharding propagation carries a parameter's split dimension into the activations
    and reshards them back and forth around every layer."""
    if all(s.spec == P() for s in jax.tree.leaves(shardings)):
        return params  # nothing is split: the replicated step stays the program it was
    replicated = jax.tree.map(lambda _: NamedSharding(mesh, P()), shardings)

    @jax.custom_vjp
    def gather(p):
        return jax.lax.with_sharding_constraint(p, replicated)

    def gather_fwd(p):
        return gather(p), None

    def gather_bwd(_, cotangent):
        return (jax.lax.with_sharding_constraint(cotangent, shardings),)

    gather.defvjp(gather_fwd, gather_bwd)
    return gather(params)
