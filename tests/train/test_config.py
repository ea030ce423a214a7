import pytest

from contrastive.train.config import ConfigError, apply_override, flatten, load_config, parse_overrides


@pytest.fixture
def config():
    return load_config("configs/simclr_digits.py")


@pytest.mark.parametrize("key,text,expected", [
    ("optimizer.lr", "0.3", 0.3), ("optimizer.lr", "1", 1.0), ("batch_size", "512", 512),
    ("model.widths", "(16, 32)", (16, 32)), ("model.widths", "64", (64,)), ("loss.name", "dcl", "dcl"),
    ("progress", "False", False),
])
def test_override_parses_and_keeps_the_type(config, key, text, expected):
    apply_override(config, key, text)
    node = config
    for part in key.split("."):
        node = node[part]
    assert node == expected and type(node) is type(expected)


@pytest.mark.parametrize("key,text,message", [
    ("optimizer.lrr", "1", r"unknown config key 'config.optimizer.lrr'; valid keys of config.optimizer: b1, b2,"),
    ("optim.lr", "1", r"unknown config key 'config.optim'; valid keys of config: augment, batch_size"),
    ("seed", "abc", r"--config.seed='abc': expected a value of type int"),
    ("batch_size", "2.5", r"expected a value of type int"),
    ("progress", "1", r"expected a value of type bool"),
    ("seed.x", "1", r"config.seed is a value, not a group"),
])
def test_bad_override_names_the_key(config, key, text, message):
    with pytest.raises(ConfigError, match=message):
        apply_override(config, key, text)


def test_an_evaluator_entry_is_added_from_a_dict_and_only_there(config):
    apply_override(config, "evals.attributes", '{"names": ("colour",)}')
    assert tuple(config.evals.attributes.names) == ("colour",)
    apply_override(config, "evals.attributes.names", "('place',)")
    assert tuple(config.evals.attributes.names) == ("place",)
    with pytest.raises(ConfigError, match=r"unknown config key 'config.evals.retrieval'"):
        apply_override(config, "evals.retrieval", "3")  # not a dict
    with pytest.raises(ConfigError, match=r"unknown config key 'config.model.extra'"):
        apply_override(config, "model.extra", "{}")  # other groups take no new keys


def test_parse_overrides_forms():
    assert parse_overrides(["--config.a=1", "--config.b.c", "x"]) == [("a", "1"), ("b.c", "x")]
    with pytest.raises(ConfigError, match="unrecognised argument '--lr=1'"):
        parse_overrides(["--lr=1"])


def test_load_config_errors_and_flatten(tmp_path, config):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "missing.py"))
    (tmp_path / "bad.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="has no get_config"):
        load_config(str(tmp_path / "bad.py"))
    flat = flatten(config)
    assert flat["optimizer.lr"] == config.optimizer.lr and flat["model.widths"] == list(config.model.widths)
