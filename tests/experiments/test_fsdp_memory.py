"""experiments/fsdp_memory.py: the per-device bytes of the state in both layouts, measured from the shards."""

from contrastive.train.config import load_config
from experiments import fsdp_memory


def test_fsdp_holds_a_fraction_of_the_replicated_state_per_device(data_dir):
    config = load_config("configs/simclr_digits.py")
    config.data.data_dir = data_dir
    replicated, fsdp = (fsdp_memory.state_bytes(config, layout, (8, 8, 1)) for layout in ("replicated", "fsdp"))
    assert replicated["split"] == 0 and fsdp["split"] == 3 and fsdp["arrays"] == replicated["arrays"]
    assert replicated["params"] == 4 * replicated["num_params"]  # float32, a whole copy
    assert replicated["opt_state"] > 2 * replicated["params"]  # adamw: two moments (and a step count)
    assert fsdp["params"] < replicated["params"] / 3 and fsdp["opt_state"] < replicated["opt_state"] / 3
    assert fsdp["total"] == fsdp["params"] + fsdp["opt_state"] + fsdp["model_state"] + 12  # + the rng key and the step
