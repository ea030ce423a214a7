"""Loading configs, applying command-line overrides, and checking them before any compute.

A config is a Python file with `get_config(arg=None) -> ml_collections.ConfigDict` (big_vision style);
`--config path/to/file.py:arg` passes `arg`. Overrides are `--config.a.b=value`: the key must exist
(otherwise the error lists the valid keys at that level) and the value is parsed as a Python literal and
must fit the existing value's type.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import pathlib
import sys

import ml_collections


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and what would be valid."""


def load_config(spec: str, overrides=()) -> ml_collections.ConfigDict:
    """Load `path.py` or `path.py:arg` and return its `get_config(arg)` with the (key, text) `overrides`
    (from `parse_overrides`) applied."""
    path, _, arg = spec.partition(":")
    file = pathlib.Path(path).resolve()
    if not file.is_file():
        raise ConfigError(f"--config: no such file {path!r}")
    # Configs import their shared pieces as `configs.common`: put the folder holding `configs/` on the path.
    root = str(file.parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    module_spec = importlib.util.spec_from_file_location(f"_contrastive_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"--config: {path} has no get_config()")
    params = inspect.signature(module.get_config).parameters
    try:
        config = module.get_config(arg or None) if params else module.get_config()
    except ValueError as e:  # a config's own check of its argument
        raise ConfigError(f"--config {spec}: {e}") from e
    for key, text in overrides:
        apply_override(config, key, text)
    return config


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word is a string: --config.loss.name=nt_xent


def _coerce(key: str, old, new):
    """`new` converted to the type of `old`, or ConfigError."""
    if old is None or isinstance(old, ml_collections.ConfigDict):
        return new
    if isinstance(old, bool):
        if isinstance(new, bool):
            return new
    elif isinstance(old, int):
        if isinstance(new, int) and not isinstance(new, bool):
            return new
    elif isinstance(old, float):
        if isinstance(new, (int, float)) and not isinstance(new, bool):
            return float(new)
    elif isinstance(old, (tuple, list)):
        if isinstance(new, (tuple, list)):
            return type(old)(new)
        if isinstance(new, (int, float)):  # --config.model.widths=64 means (64,)
            return type(old)([new])
    elif isinstance(old, str):
        return str(new)
    raise ConfigError(f"--config.{key}={new!r}: expected a value of type {type(old).__name__} "
                      f"(current value {old!r})")


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Set `config.<key>` from command-line text, checking that the key exists and the type fits; a new
    `config.evals` entry is added from a dict (`--config.evals.attributes="{}"`)."""
    *parents, leaf = key.split(".")
    node, path = config, ["config"]
    for part in parents:
        if part not in node:
            break
        node, path = node[part], [*path, part]
        if not isinstance(node, ml_collections.ConfigDict):
            raise ConfigError(f"{'.'.join(path)} is a value, not a group of keys: cannot set --config.{key}")
    if path == ["config", "evals"] and leaf not in node and isinstance(_parse_value(text), dict):
        with node.unlocked():  # a new evaluator entry, checked by name with the rest of config.evals
            node[leaf] = ml_collections.ConfigDict(_parse_value(text))
        return
    if len(path) - 1 < len(parents) or leaf not in node:
        missing = parents[len(path) - 1] if len(path) - 1 < len(parents) else leaf
        raise ConfigError(f"unknown config key {'.'.join([*path, missing])!r}; "
                          f"valid keys of {'.'.join(path)}: {', '.join(sorted(node.keys()))}")
    with node.unlocked():
        node[leaf] = _coerce(key, node[leaf], _parse_value(text))


def set_values(config: ml_collections.ConfigDict, values: dict) -> ml_collections.ConfigDict:
    """Set each dotted key of `values` (`{"model.widths": (8, 16)}`) in `config` as ConfigDict assignment does
    (for code and tests; command-line text goes through `apply_override`). Returns `config`."""
    for key, value in values.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def parse_overrides(argv: list[str]) -> list[tuple[str, str]]:
    """`--config.a.b=v` and `--config.a.b v` items of argv as (key, text) pairs."""
    out, i = [], 0
    while i < len(argv):
        item = argv[i]
        if not item.startswith("--config."):
            raise ConfigError(f"unrecognised argument {item!r}; expected --config.<key>=<value>")
        body = item[len("--config."):]
        if "=" in body:
            key, text = body.split("=", 1)
        elif i + 1 < len(argv):
            key, text = body, argv[i + 1]
            i += 1
        else:
            raise ConfigError(f"{item} needs a value")
        out.append((key, text))
        i += 1
    return out


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
    """{'a.b': value} for every leaf, tuples as lists (the JSON form)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def loss_keywords(loss_fn, loss_cfg, exclude=(), internal=()) -> dict:
    """The fields of `config.loss` other than `name`, checked against the loss's keyword arguments
    (less `exclude`, the learned ones, and `internal`, those the step passes). `reduction` is not a
    config setting: the step needs the mean loss."""
    name = loss_cfg.name
    params = inspect.signature(loss_fn).parameters
    accepted = {p for p, v in params.items() if v.kind == inspect.Parameter.KEYWORD_ONLY}
    accepted -= {"axis_name", "reduction", *exclude, *internal}
    kwargs = {k: v for k, v in loss_cfg.items() if k != "name"}
    learned = sorted(set(kwargs) & set(exclude))
    if learned:
        raise ConfigError(f"config.loss.{learned[0]} is a learned parameter of the dual encoder, not a loss setting; "
                          "set its initial value with config.model.logit_scale_init / config.model.logit_bias_init")
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join('config.loss.' + k for k in unknown)} for "
                          f"loss {name!r}; valid keys: name, {', '.join(sorted(accepted))}")
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()}
