"""contrastive.testing passes correct losses and catches the known bugs of contrastive losses."""

import inspect
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive import testing
from contrastive.losses import nt_xent
from contrastive.losses.core import gather_rows, global_mean, l2_normalize, row_offset

N, D = 16, 8  # 2 rows per virtual device


def pair(seed):
    return tuple(np.random.default_rng(seed).standard_normal((2, N, D), dtype=np.float32))


# ----------------------------------------------------------------------------------------- README example
def my_infonce(x, y, *, temperature, axis_name=None):
    """InfoNCE of each x_i against every y_j of the global batch; its positive is y_i."""
    keys = l2_normalize(gather_rows(y, axis_name))  # negatives from every device, with gradients
    logits = l2_normalize(x) @ keys.T / temperature
    positive = row_offset(x.shape[0], axis_name) + jnp.arange(x.shape[0])
    per_row = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, positive[:, None], axis=-1)[:, 0]
    return global_mean(per_row, axis_name), {}


def np_infonce(x, y, *, temperature):  # the float64 NumPy reference
    x, y = (a / np.linalg.norm(a, axis=-1, keepdims=True) for a in (x, y))
    logits = x @ y.T / temperature
    m = logits.max(axis=-1)
    return np.mean(m + np.log(np.exp(logits - m[:, None]).sum(axis=-1)) - np.diag(logits))


def test_readme_example_passes_every_check():
    x, y = np.random.default_rng(0).standard_normal((2, 16, 8), dtype=np.float32)
    ran = testing.check_loss(
        my_infonce, (x, y), 2, reference_fn=np_infonce, large_logit_hparams={"temperature": 1e-4}, temperature=0.5
    )
    assert ran == ("devices", "gradient", "large_logits", "bfloat16", "permutation")


def test_readme_shows_this_example():
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Testing your own loss: `contrastive.testing`", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    for fn in (my_infonce, np_infonce):
        assert inspect.getsource(fn) in code, f"README's example of {fn.__name__} differs from tests/test_testing.py"
    assert "testing.check_loss(my_infonce, (x, y), 2, reference_fn=np_infonce," in code


# ----------------------------------------------------------------------------------------- devices
def local_nt_xent(z1, z2, *, temperature, axis_name=None):
    """NT-Xent of each device's rows alone (no all_gather), averaged over devices: the bug of a
    SimCLR loss whose negatives come from the local device only."""
    loss, metrics = nt_xent(z1, z2, temperature=temperature)
    if axis_name is not None:
        loss, metrics = jax.lax.pmean((loss, metrics), axis_name)
    return loss, metrics


def _gather_without_gradient(y, axis_name):
    """``torch.distributed.all_gather``: the other devices' rows arrive without gradients."""
    everyone = jax.lax.stop_gradient(gather_rows(y, axis_name))
    return jax.lax.dynamic_update_slice_in_dim(everyone, y, row_offset(y.shape[0], axis_name), axis=0)


def no_grad_gather_infonce(x, y, *, temperature, axis_name=None):
    """my_infonce with the keys gathered without their gradients: right value, wrong gradient."""
    keys = l2_normalize(_gather_without_gradient(y, axis_name))
    logits = l2_normalize(x) @ keys.T / temperature
    positive = row_offset(x.shape[0], axis_name) + jnp.arange(x.shape[0])
    per_row = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, positive[:, None], axis=-1)[:, 0]
    return global_mean(per_row, axis_name), {}


def unreduced_nt_xent(z1, z2, *, temperature, axis_name=None):
    """Returns each device's local loss: no psum / pmean."""
    return nt_xent(z1, z2, temperature=temperature)[0], {}


def test_check_devices_passes_nt_xent_and_the_readme_loss():
    testing.check_devices(nt_xent, pair(1), 2, temperature=0.2)
    testing.check_devices(my_infonce, pair(1), 2, temperature=0.2)


def test_check_devices_catches_local_negatives():
    with pytest.raises(AssertionError, match="8 devices != on 1 device") as info:
        testing.check_devices(local_nt_xent, pair(1), 2, temperature=0.2)
    message = str(info.value)
    assert "loss: 1 of 1 elements differ" in message
    assert "gradient of args[0]" in message and "max |diff|" in message and "at index" in message


def test_check_devices_catches_keys_gathered_without_gradients():
    with pytest.raises(AssertionError) as info:
        testing.check_devices(no_grad_gather_infonce, pair(1), 2, temperature=0.2)
    message = str(info.value)
    assert "gradient of args[1]" in message  # the keys' gradients from the other devices are missing
    assert "  loss:" not in message and "gradient of args[0]" not in message  # value and queries are right


def test_check_devices_catches_a_loss_that_is_not_reduced_over_devices():
    with pytest.raises(AssertionError, match="differs between devices"):
        testing.check_devices(unreduced_nt_xent, pair(1), 2, temperature=0.2)


def test_check_devices_on_one_device_says_how_to_get_virtual_devices(monkeypatch):
    first = jax.devices()[:1]
    monkeypatch.setattr(jax, "devices", lambda *a, **k: first)
    with pytest.raises(AssertionError, match="xla_force_host_platform_device_count"):
        testing.check_devices(nt_xent, pair(1), 2, temperature=0.2)


# ----------------------------------------------------------------------------------------- gradient
@jax.custom_vjp
def _gradient_times_1_1(x):
    return x


_gradient_times_1_1.defvjp(lambda x: (x, None), lambda _, g: (1.1 * g,))


def wrong_vjp_infonce(x, y, *, temperature, axis_name=None):
    """my_infonce whose custom backward pass scales the gradient of x by 1.1."""
    return my_infonce(_gradient_times_1_1(x), y, temperature=temperature, axis_name=axis_name)


def test_check_gradient_passes_the_readme_loss():
    testing.check_gradient(my_infonce, np_infonce, pair(2), 2, temperature=0.3)


def test_check_gradient_catches_a_wrong_custom_vjp():
    with pytest.raises(AssertionError, match="check_gradient") as info:
        testing.check_gradient(wrong_vjp_infonce, np_infonce, pair(2), 2, temperature=0.3)
    message = str(info.value)
    assert "gradient of args[0]" in message
    assert "  loss:" not in message and "gradient of args[1]" not in message  # only x's gradient is wrong


def test_check_gradient_catches_a_wrong_value():
    shifted = lambda x, y, *, temperature: np_infonce(x, y, temperature=temperature) + 1e-2
    with pytest.raises(AssertionError, match="  loss:"):
        testing.check_gradient(my_infonce, shifted, pair(2), 2, temperature=0.3)


# ----------------------------------------------------------------------------------------- large logits
def dot_infonce(x, y, *, naive, axis_name=None):
    """InfoNCE on raw dot products; ``naive`` writes log(sum(exp(logits))) out."""
    logits = x @ gather_rows(y, axis_name).T
    positive = row_offset(x.shape[0], axis_name) + jnp.arange(x.shape[0])
    lse = jnp.log(jnp.sum(jnp.exp(logits), axis=-1)) if naive else jax.nn.logsumexp(logits, axis=-1)
    per_row = lse - jnp.take_along_axis(logits, positive[:, None], axis=-1)[:, 0]
    return global_mean(per_row, axis_name), {}


def test_check_finite_at_large_logits_catches_exp_then_log():
    testing.check_finite_at_large_logits(dot_infonce, pair(3), 2, static={"naive": False})
    testing.check_finite_at_large_logits(dot_infonce, pair(3), 2, scale=1.0, static={"naive": True})
    with pytest.raises(AssertionError, match="loss: 1 of 1 elements not finite"):
        testing.check_finite_at_large_logits(dot_infonce, pair(3), 2, static={"naive": True})


def test_check_finite_at_large_logits_passes_nt_xent_at_temperature_1e_4():
    testing.check_finite_at_large_logits(nt_xent, pair(3), 2, temperature=1e-4)


# ----------------------------------------------------------------------------------------- bfloat16
def input_dtype_dot_infonce(x, y, *, axis_name=None):
    """Computed in the dtype of its inputs: bfloat16 in, bfloat16 out."""
    logits = x @ y.T
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - jnp.diagonal(logits)), {}


def test_check_bfloat16_passes_nt_xent():
    testing.check_bfloat16(nt_xent, pair(4), 2, temperature=0.3)


def test_check_bfloat16_catches_a_loss_computed_in_bfloat16():
    with pytest.raises(AssertionError, match="dtype bfloat16, expected float32"):
        testing.check_bfloat16(input_dtype_dot_infonce, pair(4), 2)


# ----------------------------------------------------------------------------------------- permutation
def shifted_nt_xent(z1, z2, *, temperature, axis_name=None):
    """Pairs z1_i with z2_(i-1): positives found by position, so the loss depends on the row order."""
    return nt_xent(z1, jnp.roll(z2, 1, axis=0), temperature=temperature, axis_name=axis_name)


def test_check_permutation_invariance_passes_nt_xent():
    testing.check_permutation_invariance(nt_xent, pair(5), 2, temperature=0.3)


def test_check_permutation_invariance_catches_row_order_dependence():
    with pytest.raises(AssertionError, match="check_permutation_invariance") as info:
        testing.check_permutation_invariance(shifted_nt_xent, pair(5), 2, temperature=0.3)
    assert "  loss:" in str(info.value)


# ----------------------------------------------------------------------------------------- check_loss
def test_check_loss_reports_the_failing_check_and_runs_the_others():
    with pytest.raises(AssertionError, match=r"1 of 4 checks failed\n\[devices\]"):
        testing.check_loss(local_nt_xent, pair(6), 2, large_logit_hparams={"temperature": 1e-4}, temperature=0.3)


def test_check_loss_rejects_unknown_check_names():
    with pytest.raises(ValueError, match="unknown checks"):
        testing.check_loss(nt_xent, pair(6), 2, skip=("device",), temperature=0.3)


def test_assert_trees_close_names_the_leaf_and_the_worst_element():
    expected = {"a": np.zeros(3), "b": np.ones((2, 2))}
    actual = {"a": np.zeros(3), "b": np.array([[1.0, 1.0], [1.5, 1.0]])}
    testing.assert_trees_close(expected, expected)
    with pytest.raises(AssertionError, match=r"b: 1 of 4 elements differ, max \|diff\| 0.5; worst at index \(1, 0\)"):
        testing.assert_trees_close(actual, expected)
