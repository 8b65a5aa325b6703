"""The locked install: the lock is complete, honours pyproject.toml's ranges and the CPU torch pair, and
the environment the suite runs in is exactly the lock (what CI tests is what a user gets)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (CI runs 3.11)

REPO = Path(__file__).resolve().parents[2]
LOCKS = {name: REPO / "requirements" / f"{name}.lock" for name in ("cpu", "vllm-lane", "image", "trl")}


def _lock_module():
    spec = importlib.util.spec_from_file_location("stgrl_lock_script", REPO / "scripts" / "lock.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


lock = _lock_module()


def test_read_compare_and_moved_are_exact(tmp_path):
    path = tmp_path / "x.lock"
    path.write_text("# header\nFoo_Bar==1.0\nbaz==2.0  # why\n\n")
    pins = lock.read_lock(path)
    assert pins == {"foo-bar": "1.0", "baz": "2.0"}
    assert lock.compare(pins, {"foo-bar": "1.0", "baz": "2.0"}) == []
    assert lock.compare(pins, {"foo-bar": "1.1", "extra": "3"}) == [
        "extra==3 is installed but not in the lock", "foo-bar is 1.1, the lock says 1.0",
        "baz==2.0 is in the lock but not installed"]
    assert lock.moved(pins, {"foo-bar": "1.0", "baz": "2.1", "new": "1"}) == [
        "baz 2.0 -> 2.1", "new (new) -> 1"]
    path.write_text("foo>=1\n")
    with pytest.raises(SystemExit, match="expected 'name==version'"):
        lock.read_lock(path)


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_every_line_of_the_lock_is_an_exact_pin(name):
    pins = lock.read_lock(LOCKS[name])
    assert len(pins) > 50  # the whole transitive closure, not a handful of direct dependencies


def test_the_lock_honours_pyproject_ranges_and_the_cpu_torch_pair():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = lock.read_lock(LOCKS["cpu"])
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    for req in wanted:
        name = lock.canonical(req.name)
        assert name in pins, f"{req.name} is a dependency but not in the lock"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])
    for line in (REPO / "constraints-cpu.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            assert req.specifier.contains(pins[lock.canonical(req.name)]), (line, pins[lock.canonical(req.name)])


def test_this_environment_is_exactly_the_lock():
    """What the suite runs against must be what `make setup` installs on a fresh machine."""
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        pytest.skip(f"not running in the project's .venv ({sys.prefix}): nothing to compare")
    assert lock.compare(lock.read_lock(LOCKS["cpu"]), lock.installed()) == []


def test_the_image_lock_has_vllm_and_the_manifests_ray():
    pins = lock.read_lock(LOCKS["image"])
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)", (REPO / "k8s" / "Dockerfile").read_text(), re.M).group(1)
    assert pins["ray"] == ray_version
    assert "vllm" in pins and "deepspeed" in pins and "msgspec" in pins
    assert "requirements/image.lock" in (REPO / "k8s" / "Dockerfile").read_text()


def test_the_trl_lock_is_the_core_lock_plus_trl_at_the_makefiles_version():
    """The TRL peer benchmark's venv (`make trl-venv`) must run stgrl at exactly the core versions, so
    the two systems differ only in the trainer; TRL itself is pinned where the Makefile installs it."""
    core, trl = lock.read_lock(LOCKS["cpu"]), lock.read_lock(LOCKS["trl"])
    assert {name: trl.get(name) for name in core} == core
    version = re.search(r"^TRL_VERSION := (\S+)", (REPO / "Makefile").read_text(), re.M).group(1)
    assert trl["trl"] == version
    assert {"datasets", "accelerate"} <= set(trl)
