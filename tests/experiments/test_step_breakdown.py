"""The train-step breakdown (experiments/step_breakdown.py) on the tiniest case: every part is timed, takes
time, and the parts run inside the step account for it."""

import pytest

from experiments import step_breakdown as sb


@pytest.mark.slow
def test_the_parts_of_a_tiny_step_are_positive_and_account_for_the_step(tiny_config):
    config = tiny_config(batch_size=32, **{"data.num_workers": 1, "compilation_cache_dir": ""})
    r = sb.breakdown(config, rounds=3)
    assert set(r["median_s"]) == {*sb.PARTS, "step"} and all(len(t) == 3 for t in r["times_s"].values())
    assert all(r["median_s"][name] > 0 for name in r["median_s"])
    shares = r["shares_of_step"]
    assert all(shares[name] > 0 for name in sb.PARTS)
    # The four parts the jitted step runs are each a fraction of it, and together neither a small part of it
    # nor several times it: a part timed wrongly (not blocked on, or run twice) breaks one of these.
    assert all(shares[name] < 1.5 for name in sb.IN_STEP)
    in_step = sum(shares[name] for name in sb.IN_STEP)
    assert 0.3 < in_step < 2.0 and shares["other"] == pytest.approx(1 - in_step)
    assert r["batch_size"] == 32 and r["views"] == 2 and r["image_shape"] == [8, 8, 1] and r["devices"] == 8
    table = sb.markdown({"tiny": r}, {"machine": "m", "load_before": "0", "load_after": "0",
                                      "descriptions": {"tiny": "tiny"}}, "cmd")
    assert "| train step (whole) |" in table and "| loss fwd+bwd |" in table and "`cmd`" in table


def test_a_method_without_a_plain_model_forward_is_refused(tiny_config):
    config = tiny_config("configs/byol_digits.py")
    with pytest.raises(ValueError, match="contrastive view-based methods.*loss.name='byol'"):
        sb.breakdown(config, rounds=1)
