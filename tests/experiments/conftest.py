"""The train tests' fixtures (`tiny_config`) for the experiment scripts' tests."""

from tests.train.conftest import tiny_config  # noqa: F401 - the fixture
