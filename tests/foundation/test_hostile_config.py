"""Config input that used to hang, crash or be misread (issue 26 #6 and #10): each is a `ConfigError`
naming what is wrong, before any work starts."""

from __future__ import annotations

import time

import pytest

from stgrl.orchestration.config import ConfigError, load_config, parse_override

pytestmark = pytest.mark.timeout(60)

BILLION_LAUGHS = "\n".join(
    ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
) + "\n"


def test_a_yaml_alias_bomb_is_refused_quickly_before_validation(tmp_path):
    """'Billion laughs' (9 levels of 9 aliases, 10**9 nodes once expanded) hung `stgrl config` for
    more than 120 s at 2 GB; now it is refused in well under a second."""
    p = tmp_path / "bomb.yaml"
    p.write_text(BILLION_LAUGHS)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than 100000 nodes through its aliases"):
        load_config(p)
    assert time.perf_counter() - t0 < 5


def test_small_aliases_still_work_and_a_cyclic_one_is_refused(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text("rollout: {num_workers: &n 3}\nreward: {num_shards: *n}\n")
    cfg = load_config(ok)
    assert cfg.rollout.num_workers == cfg.reward.num_shards == 3
    cyclic = tmp_path / "cyclic.yaml"
    cyclic.write_text("run: &a {name: [*a]}\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(cyclic)


def test_yaml_1_1_words_stay_strings_for_string_fields():
    """`transport.curve=on` was read as the boolean True (YAML 1.1) where the field wants "on"."""
    assert parse_override("transport.curve=on") == ("transport.curve", "on")
    assert load_config(None, ["transport.curve=on"]).transport.curve == "on"
    assert load_config(None, ["transport.curve=off"]).transport.curve == "off"
    assert load_config(None, ["metrics.wandb=false"]).metrics.wandb is False
    with pytest.raises(ConfigError, match="metrics.wandb"):  # a boolean is true/false, not yes/no
        load_config(None, ["metrics.wandb=yes"])


def test_curve_off_in_a_config_file_is_the_string_off(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("transport:\n  curve: off\n  bind_host: 127.0.0.1\n")
    assert load_config(p).transport.curve == "off"


@pytest.mark.parametrize(("override", "key"), [
    ("run.seed=1e26", "run.seed"),
    ("run.seed=100000000000000000000000000", "run.seed"),  # failed 25 s later inside an actor
    ("run.seed=-1", "run.seed"),
    ("run.seed=4294967296", "run.seed"),         # NumPy takes seeds below 2**32
    ("transport.heartbeat_s=1e300", "transport.heartbeat_s"),  # OverflowError at socket creation
    ("transport.heartbeat_s=0.0001", "transport.heartbeat_s"),  # 0 ms would turn heartbeats off
    ("transport.timeout_s=1e300", "transport.timeout_s"),
    ("reward.weights.format=1.7e308", "reward.weights.format"),  # totals became inf ("total": null)
    ("reward.deadline_s=1e300", "reward.deadline_s"),
    ("data.synth_seed=1e30", "data.synth_seed"),
])
def test_numbers_beyond_what_the_code_can_use_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config(None, [override])


def test_the_largest_allowed_values_are_usable():
    cfg = load_config(None, ["run.seed=4294967295", "transport.heartbeat_s=3600",
                             "reward.weights.format=1e6"])
    import numpy as np

    np.random.seed(cfg.run.seed)
    assert cfg.reward.weights.format * 7 < float("inf")


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("run:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 0xe9 at offset 16\)"):
        load_config(p)


def test_a_deeply_nested_config_is_a_config_error(tmp_path):
    p = tmp_path / "deep.yaml"
    p.write_text("run: " + "[" * 20_000 + "]" * 20_000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(p)
