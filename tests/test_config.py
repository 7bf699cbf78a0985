"""The config system: overrides, type checks, choices, unknown keys, atomic JSON."""
import dataclasses
import json

import pytest

from config import ConfigError, check, option, parse, write_json


@dataclasses.dataclass
class Demo:
    steps: int = option(10, "steps")
    lr: float = option(1e-3, "learning rate")
    harden: bool = option(True, "a flag")
    name: str = option("x", "a name")
    mode: str = option("nft", "a closed set", ("nft", "erase", "off"))


def test_overrides_are_converted():
    cfg = parse(Demo, ["--steps=5", "--lr=1e-2", "--harden=false", "--name=run1", "--mode=erase"])
    assert cfg == Demo(steps=5, lr=0.01, harden=False, name="run1", mode="erase")
    assert parse(Demo, ["--lr=3"]).lr == 3.0


def test_a_bare_flag_switches_a_true_false_option_on():
    assert parse(Demo, ["--harden=false", "--harden"]).harden is True
    with pytest.raises(ConfigError, match="--key=value"):
        parse(Demo, ["--name"])  # only true/false options can be bare


@pytest.mark.parametrize("argv, match", [
    (["--step=5"], "Did you mean --steps"),
    (["--steps=abc"], "expects int"),
    (["--harden=maybe"], "expects true or false"),
    (["--mode=sometimes"], "choose one of"),
    (["--steps"], "--key=value"),
    (["steps=5"], "--key=value"),
])
def test_bad_options_are_refused(argv, match):
    with pytest.raises(ConfigError, match=match):
        parse(Demo, argv)


def test_check_refuses_wrong_types_set_in_code():
    with pytest.raises(ConfigError, match="steps must be int"):
        check(Demo(steps="5"))
    with pytest.raises(ConfigError, match="steps must be int"):
        check(Demo(steps=True))
    check(Demo(lr=1))  # an int where a float is expected is fine


def test_write_json_is_atomic(tmp_path):
    write_json(tmp_path / "sub" / "a.json", {"x": 1})
    write_json(tmp_path / "sub" / "a.json", {"x": 2})
    assert json.loads((tmp_path / "sub" / "a.json").read_text()) == {"x": 2}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.json"]
