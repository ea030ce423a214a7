"""Give every test 8 virtual CPU devices; must run before jax is imported."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import contrastive  # noqa: E402,F401 - works around a jaxlib CPU miscompilation via XLA_FLAGS


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds; still runs in CI")
