"""Unit tests for probes.config: one schema for CLI, sweeps and notebooks."""

from __future__ import annotations

import argparse
import enum
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from probes.config import Config, ConfigError


class Site(enum.Enum):
    RESID = "resid_post"
    ATTN = "attn_out"


@dataclass(frozen=True, kw_only=True)
class Inner(Config):
    layer: int = field(default=3, metadata={"help": "layer index"})
    site: Site = field(default=Site.RESID, metadata={"help": "site name"})


@dataclass(frozen=True, kw_only=True)
class Exp(Config):
    """A toy experiment."""

    model: str = field(metadata={"help": "model spec, e.g. zoo:reasoner"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate (100% safe)"})
    steps: int = field(default=10, metadata={"help": "training steps"})
    verbose: bool = field(default=False, metadata={"help": "log more"})
    layers: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "layers"})
    shape: tuple[int, int] = field(default=(2, 3), metadata={"help": "a pair"})
    out: Path = field(default=Path("out"), metadata={"help": "output dir"})
    max_len: int | None = field(default=None, metadata={"help": "max length"})
    mode: Literal["mean", "pca"] = field(default="mean", metadata={"help": "aggregator"})
    inner: Inner = field(default_factory=Inner, metadata={"help": "nested"})

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")


def test_from_dict_converts_types() -> None:
    cfg = Exp.from_dict(
        {
            "model": "zoo:x",
            "lr": "0.5",
            "steps": 4.0,
            "verbose": "yes",
            "layers": "4,5",
            "shape": [7, "8"],
            "out": "/tmp/o",
            "max_len": "none",
            "mode": "pca",
            "inner": {"layer": "1", "site": "attn_out"},
        }
    )
    assert cfg.lr == 0.5 and cfg.steps == 4 and type(cfg.steps) is int
    assert cfg.verbose is True
    assert cfg.layers == [4, 5]
    assert cfg.shape == (7, 8)
    assert cfg.out == Path("/tmp/o")
    assert cfg.max_len is None
    assert cfg.mode == "pca"
    assert cfg.inner == Inner(layer=1, site=Site.ATTN)


def test_unknown_key_names_key_and_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as e:
        Exp.from_dict({"model": "m", "learning_rate": 0.1})
    msg = str(e.value)
    assert "'learning_rate'" in msg
    assert "lr" in msg and "steps" in msg and "inner" in msg


def test_unknown_nested_key_fails() -> None:
    with pytest.raises(ConfigError, match="'depth'"):
        Exp.from_dict({"model": "m", "inner": {"depth": 2}})


@pytest.mark.parametrize(
    ("key", "value"),
    [("steps", "ten"), ("steps", 1.5), ("verbose", "maybe"), ("mode", "median"), ("shape", [1, 2, 3]), ("lr", True)],
)
def test_bad_values_fail(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        Exp.from_dict({"model": "m", key: value})


def test_missing_required_field() -> None:
    with pytest.raises(ConfigError, match="model"):
        Exp.from_dict({"lr": 0.1})


def test_post_init_validation_runs() -> None:
    with pytest.raises(ValueError, match="steps must be positive"):
        Exp.from_dict({"model": "m", "steps": 0})


def test_json_round_trip_and_passed() -> None:
    cfg = Exp.from_dict({"model": "m", "layers": [3], "inner": {"layer": 5}})
    d = json.loads(cfg.to_json())
    assert d["out"] == "out" and d["inner"] == {"layer": 5, "site": "resid_post"}
    assert d["shape"] == [2, 3]
    assert Exp.from_json(cfg.to_json()) == cfg
    assert cfg.passed() == {"model": "m", "layers": [3], "inner": {"layer": 5, "site": "resid_post"}}


def test_passed_of_directly_built_config_is_the_non_defaults() -> None:
    cfg = Exp(model="m", steps=10, lr=0.1)
    assert cfg.passed() == {"model": "m", "lr": 0.1}


def test_frozen() -> None:
    cfg = Exp(model="m")
    with pytest.raises(AttributeError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_parse_args_every_field_and_passed() -> None:
    cfg = Exp.parse_args(
        [
            "--model",
            "zoo:r",
            "--max-len",
            "64",
            "--verbose",
            "--layers",
            "1,2",
            "3",
            "--inner.layer",
            "0",
            "--mode",
            "pca",
        ]
    )
    assert cfg.model == "zoo:r" and cfg.max_len == 64 and cfg.verbose is True
    assert cfg.layers == [1, 2, 3]
    assert cfg.inner.layer == 0 and cfg.inner.site is Site.RESID
    assert cfg.mode == "pca"
    assert set(cfg.passed()) == {"model", "max_len", "verbose", "layers", "inner", "mode"}
    assert Exp.parse_args(["--model", "m", "--no-verbose"]).verbose is False
    assert Exp.parse_args(["--model", "m"]) == Exp(model="m")


def test_argparse_help_and_defaults() -> None:
    parser = argparse.ArgumentParser()
    Exp.add_to_argparse(parser)
    text = parser.format_help()
    for flag in ["--model", "--lr", "--max-len", "--verbose", "--no-verbose", "--inner.layer", "--inner.site"]:
        assert flag in text
    assert "learning rate (100% safe) (default: 0.001)" in " ".join(text.split())
    assert "(default: [1, 2])" in text


def test_argparse_rejects_bad_choice() -> None:
    with pytest.raises(SystemExit):
        Exp.parse_args(["--model", "m", "--mode", "median"])


class _Kind(enum.Enum):
    A = "a"
    B = "b"


@dataclass(frozen=True, kw_only=True)
class _Choices(Config):
    style: Literal["chat", "math"] = field(default="chat", metadata={"help": "prompt style"})
    stages: list[Literal["base", "report"]] = field(default_factory=lambda: ["base"], metadata={"help": "stages"})
    kind: _Kind = field(default=_Kind.A, metadata={"help": "kind"})


def test_help_lists_the_choices_of_literal_and_enum_fields(capsys):
    with pytest.raises(SystemExit):
        _Choices.parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "prompt style; choices: chat, math" in out and "stages; choices: base, report" in out
    assert "kind; choices: a, b" in out
    with pytest.raises(ConfigError, match="'rollout' is not one of"):
        _Choices.parse_args(["--stages", "rollout"])
