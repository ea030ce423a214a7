"""Telling every process of a job one answer through jax's coordination service, not through a collective.

`broadcast_text` carries process 0's text (its workdir lock verdict) to the others over the key-value store
of the service that `jax.distributed.initialize` connected to (gRPC). A job
that is refused thus never runs a collective: on CPU the first collective of a device group sets up a gloo
context, and that set-up has failed under load (`Connect timeout`), once in CI for the second job of the
held-workdir test, whose processes started on 2 cores busy with a running job. A peer merely arriving
late is not the cause: one 40 s or 100 s behind the other still joined on an idle host
(`tests/parallel/test_coordination.py` keeps the 40 s case).

A no-op in a single process. It uses `jax._src.distributed.global_state.client`, the client that
`multihost_utils` and orbax's barriers use; jax has no public name for it.
"""

from __future__ import annotations

import itertools

import jax

# How long a process waits for process 0 (still building data, compiling). jax 0.10.2 was seen to wait past
# a 2 s timeout for a key set 40 s later, so in practice the wait ends when the key comes or when process 0,
# which hosts the service, dies (the call then raises).
TIMEOUT_S = 3600
_calls = itertools.count()  # the service keeps every key: each call gets a new one


class CoordinationError(RuntimeError):
    """Process 0's answer did not come (it died, or lags by more than TIMEOUT_S)."""


def broadcast_text(name: str, text: str | None) -> str:
    """Process 0's `text` on every process (the others' `text` is ignored). Every process makes the same
    calls in the same order (the key is `name` and the call's number)."""
    if jax.process_count() == 1:
        return text or ""
    from jax._src import distributed

    client, key = distributed.global_state.client, f"contrastive/{next(_calls)}/{name}"
    if client is None:
        raise CoordinationError("jax.process_count() > 1 but jax.distributed was not initialized")
    if jax.process_index() == 0:
        client.key_value_set(key, text or "")
        return text or ""
    try:
        return client.blocking_key_value_get(key, TIMEOUT_S * 1000)
    except Exception as e:  # noqa: BLE001 - jaxlib raises its own runtime error type
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CoordinationError(f"process {jax.process_index()} waited for process 0's {name!r}: {reason}") from None
