"""Locked installs: resolve, check and compare the fully pinned dependency set.

`pyproject.toml` keeps compatible ranges for people who install stgrl into their own environment; what
`make setup`, CI, the vLLM lane and the Docker image install is pinned to the exact versions in a lock
file, so a fresh machine gets the versions the suite passed with (a new release of a dependency once
changed an error message and failed two tests on a fresh install, with nothing in the project changed).

    python scripts/lock.py resolve --out requirements/cpu.lock [--keep]   # re-resolve (pip, no install)
    python scripts/lock.py check requirements/cpu.lock                      # the venv == the lock?
    python scripts/lock.py freeze --out requirements/vllm-lane.lock        # pin what a venv holds
    python scripts/lock.py diff OLD NEW                                     # which versions moved
    python scripts/lock.py resolve --out requirements/trl.lock --constraints constraints-cpu.txt \
        --constraints requirements/cpu.lock --also trl==1.16.0              # the core lock + a peer

`resolve` asks pip's own resolver (``pip install --dry-run --report``) for the set that
``-e '.[dev]'`` plus the CPU torch pair (``constraints-cpu.txt``) would install. With ``--keep`` the
current lock is a constraint too, so nothing moves that still fits (``make lock``, after a change to
pyproject.toml); without it every package moves to the newest allowed version (``make upgrade``).
``--also REQ`` adds requirements outside the project (the TRL peer benchmark's ``trl``): with the core
lock as a constraint, the result is the core lock plus what they bring.
Standard library only: this runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "stgrl"
# Installer tools are pinned as well: `make setup` upgrades them to exactly these.
TOOLS = ("pip", "setuptools", "wheel")


def canonical(name: str) -> str:
    """PEP 503 name: the form in which two spellings of one distribution compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of a lock file (``name==version`` lines, ``#`` comments)."""
    pins: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise SystemExit(f"{path}:{lineno}: expected 'name==version', got {line!r}")
        pins[canonical(name)] = version.strip()
    return pins


def write_lock(path: Path, pins: dict[str, str], header: str) -> None:
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [f"{name}=={pins[name]}" for name in sorted(pins)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def resolve(python: str, constraints: list[Path], extras: str, also: tuple[str, ...] = ()) -> dict[str, str]:
    """The exact set pip would install for the project with ``extras`` (and the requirements `also`),
    without installing it."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), "-e", f"{ROOT}[{extras}]", *TOOLS, *also]
        for c in constraints:
            cmd += ["-c", str(c)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise SystemExit(f"pip could not resolve the dependencies (exit {proc.returncode}):\n{tail}")
        installs = json.loads(report.read_text(encoding="utf-8"))["install"]
    return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in installs
            if canonical(i["metadata"]["name"]) != PROJECT}


def installed() -> dict[str, str]:
    """``{canonical name: version}`` of every distribution installed in the running environment."""
    out: dict[str, str] = {}
    # This environment's own site-packages only: a test (or a .pth file) may put other folders with
    # distributions on sys.path, and those are not what `make setup` installed.
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    for dist in metadata.distributions(path=paths):
        name = dist.metadata["Name"]
        if name:
            out[canonical(name)] = dist.version
    out.pop(PROJECT, None)
    return out


def compare(pins: dict[str, str], have: dict[str, str]) -> list[str]:
    """Every way the environment differs from the lock, in words (empty: they agree)."""
    problems = []
    for name in sorted(have):
        if name not in pins:
            problems.append(f"{name}=={have[name]} is installed but not in the lock")
        elif have[name] != pins[name]:
            problems.append(f"{name} is {have[name]}, the lock says {pins[name]}")
    problems += [f"{name}=={pins[name]} is in the lock but not installed" for name in sorted(set(pins) - set(have))]
    return problems


def moved(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Which pins changed between two locks: ``name old -> new``, added and removed ones marked."""
    rows = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a != b:
            rows.append(f"{name} {a or '(new)'} -> {b or '(removed)'}")
    return rows


def _header(kind: str, how: str) -> str:
    return (f"Fully resolved pins ({kind}) for {sys.platform}, CPython "
            f"{sys.version_info.major}.{sys.version_info.minor}. Generated by scripts/lock.py: do not edit.\n{how}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("resolve", help="re-resolve the lock with pip's resolver (installs nothing)")
    r.add_argument("--out", type=Path, default=ROOT / "requirements" / "cpu.lock")
    r.add_argument("--keep", action="store_true", help="keep the current pins where they still fit")
    r.add_argument("--constraints", type=Path, action="append", default=None,
                   help="policy pins that every resolution honours (the CPU torch pair; the image's Ray); "
                        "repeatable; default constraints-cpu.txt")
    r.add_argument("--extras", default="dev")
    r.add_argument("--also", action="append", default=[], metavar="REQ",
                   help="a requirement outside the project to resolve with it (repeatable), e.g. trl==1.16.0")
    r.add_argument("--python", default=sys.executable, help="interpreter whose pip resolves")
    c = sub.add_parser("check", help="fail unless the running environment holds exactly the lock")
    c.add_argument("lock", type=Path)
    c.add_argument("--ignore", nargs="*", default=[], help="distributions not held to the lock")
    f = sub.add_parser("freeze", help="write the running environment's versions as a lock")
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--kind", default="frozen environment")
    d = sub.add_parser("diff", help="which versions moved between two lock files")
    d.add_argument("old", type=Path)
    d.add_argument("new", type=Path)
    args = ap.parse_args(argv)

    if args.cmd == "resolve":
        constraints = list(args.constraints or [ROOT / "constraints-cpu.txt"])
        names = ", ".join(c.name for c in constraints)
        if args.keep and args.out.is_file():
            constraints.append(args.out)
        old = read_lock(args.out) if args.out.is_file() else {}
        pins = resolve(args.python, constraints, args.extras, tuple(args.also))
        also = f", also {', '.join(args.also)}" if args.also else ""
        write_lock(args.out, pins, _header(
            f"extras [{args.extras}]{also}, policy pins of {names}",
            "make lock / make lock-image: re-resolve keeping the pins that still fit; make upgrade: newest "
            "allowed."))
        rows = moved(old, pins)
        print(f"{args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}: "
              f"{len(pins)} pins, {len(rows)} moved")
        for row in rows:
            print(f"  {row}")
        return 0
    if args.cmd == "check":
        have = installed()
        for name in args.ignore:
            have.pop(canonical(name), None)
        problems = compare(read_lock(args.lock), have)
        if problems:
            print(f"this environment ({sys.prefix}) does not match {args.lock}:", file=sys.stderr)
            for p in problems:
                print(f"  {p}", file=sys.stderr)
            print("if pyproject.toml changed, run `make lock` and commit the lock; otherwise re-create the "
                  "venv (`make clean setup`)", file=sys.stderr)
            return 1
        return 0
    if args.cmd == "freeze":
        write_lock(args.out, installed(), _header(args.kind, "make lock-vllm: re-made from a fresh lane venv at "
                                                     "the newest allowed versions."))
        return 0
    rows = moved(read_lock(args.old), read_lock(args.new))
    print("\n".join(rows) if rows else "no version moved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
