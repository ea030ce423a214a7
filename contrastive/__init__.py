"""contrastive: large-batch contrastive representation learning in JAX/Flax."""

import os
from importlib.metadata import PackageNotFoundError, version

__version__ = "0.1.0"

_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def _disable_miscompiling_cpu_fusion() -> None:
    """Turn off XLA:CPU's YNN fusion on jaxlib 0.10, which returns wrong numbers.

    With it, a jitted dot product whose operand is a broadcast constant and whose result is reduced
    (e.g. `(x @ jnp.ones((8, 10))).sum()`) comes out wrong, NaN or ~1e37 (tests/test_xla_workaround.py).
    XLA reads XLA_FLAGS when the first computation runs, so this works as long as `contrastive` is
    imported before anything is computed; a flag the user set explicitly is left alone.
    """
    try:
        jaxlib_version = version("jaxlib")
    except PackageNotFoundError:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if jaxlib_version.startswith("0.10.") and _YNN_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {_YNN_FLAG}=".strip()


_disable_miscompiling_cpu_fusion()
