"""Give every test 8 virtual CPU devices (set before jax is imported); one prepared copy of the digits data
and one compilation cache per test session."""

import os

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import contrastive  # noqa: E402,F401 - works around a jaxlib CPU miscompilation via XLA_FLAGS


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds; still runs in CI")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    from contrastive.data import digits

    digits.digits_builder(str(path))
    return str(path)


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax_cache"))
