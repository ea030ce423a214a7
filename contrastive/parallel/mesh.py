"""The device mesh: one `data` axis over which the batch is sharded."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

DATA_AXIS = "data"


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D mesh named `data` over the first `num_devices` devices (0: all of them).

    `jax.sharding.Mesh` is used rather than `jax.make_mesh`, whose axes default to Explicit sharding in
    recent JAX; the train step relies on automatic (GSPMD) partitioning outside the loss.
    """
    devices = jax.devices()
    if num_devices < 0 or num_devices > len(devices):
        raise ValueError(f"num_devices={num_devices}: this job has {len(devices)} devices "
                         "(0 means all of them)")
    if num_devices and jax.process_count() > 1:
        raise ValueError("num_devices must be 0 (all devices) in a multi-process job")
    return Mesh(np.array(devices[: num_devices or len(devices)]), (DATA_AXIS,))


def check_global_batch(global_batch_size: int, mesh: Mesh) -> None:
    """The global batch splits evenly over the mesh's devices, and so over the processes of the job
    (each process reads batch_size / num_processes rows and gives each of its devices an equal part)."""
    n = mesh.devices.size
    processes = len({d.process_index for d in mesh.devices.flat})
    where = f"{n} devices of the mesh" if processes == 1 else \
        f"{n} devices of the mesh ({processes} processes x {n // processes} local devices)"
    if global_batch_size < 1 or global_batch_size % n:
        raise ValueError(f"batch_size={global_batch_size} (the global batch) is not divisible by the "
                         f"{where}; use a multiple of {n}")
