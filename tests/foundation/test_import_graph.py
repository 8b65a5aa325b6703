"""The package import graph runs one way, and the pure cores import no Ray or ZeroMQ.

Layers, highest first: ``orchestration`` → ``actors`` → ``rollout`` | ``reward_service`` |
``learner`` → ``transport`` (docs/architecture.md). A module may import its own package and any
package below it, never one beside or above it; ``stgrl.explain`` (typed-error explanations) sits
below everything and ``stgrl.__main__`` (the entry point) above everything. Every import counts,
also one inside a function: a lazy import is a dependency too, only a later one.

Parsed with `ast`, nothing is imported, so the test is fast and needs none of the heavy libraries.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

RANK = {"transport": 0, "rollout": 1, "reward_service": 1, "learner": 1, "actors": 2, "orchestration": 3}
"""A package's layer: it may import only packages of a lower rank (and itself)."""
ROOT_RANK = {"stgrl.explain": -1, "stgrl.__main__": 4, "stgrl": -1}
"""Modules of the ``stgrl`` namespace itself: a utility below every layer, the CLI entry above."""

ALLOWED: dict[tuple[str, str], str] = {
    ("stgrl.rollout.base_pretrain", "stgrl.learner.sft"):
        "the base-model pretraining stage (run by `stgrl demo` before SFT) trains the tiny model's vision "
        "tower with the SFT collation and loss; it lives beside the tiny model it prepares, and imports "
        "them lazily, inside the training functions",
}
"""Known imports against the layering: (importing module, imported module) -> why it is accepted."""

PURE_CORES = (
    "stgrl.reward_service.components", "stgrl.reward_service.config", "stgrl.reward_service.fast",
    "stgrl.reward_service.geometry", "stgrl.reward_service.nearest", "stgrl.reward_service.offline",
    "stgrl.reward_service.parser", "stgrl.reward_service.rewards", "stgrl.reward_service.text",
    "stgrl.reward_service.types",
    "stgrl.learner.batch", "stgrl.learner.config", "stgrl.learner.gspo", "stgrl.learner.logprobs",
    "stgrl.learner.schedule",
    "stgrl.rollout.config", "stgrl.rollout.prompts",
    "stgrl.transport.config", "stgrl.transport.scoring", "stgrl.transport.tensor_frames", "stgrl.transport.wire",
)
"""Reward math, the GSPO loss, schedules, configs and the wire schema: usable (and tested) without a
cluster or a socket, so nothing they import, directly or through the project, may pull in these:"""
FORBIDDEN_IN_CORES = ("ray", "zmq")


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) if parts[0] == "stgrl" else ".".join(["stgrl", *parts])


def project_modules() -> dict[str, Path]:
    """Every module of the layered packages and of ``stgrl/``, by its import name."""
    files = [p for d in (*RANK, "stgrl") for p in (REPO / d).rglob("*.py")]
    return {_module_name(p): p for p in files}


def imported_names(module: str, path: Path) -> set[str]:
    """Every name ``module`` imports anywhere (``from a.b import c`` gives ``a.b.c``, which resolves to
    the module ``a.b`` when ``c`` is a name in it); relative imports are resolved against the
    module's package."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to (``a.b.Thing`` -> ``a.b``), None outside the project."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _rank(module: str) -> tuple[str, int]:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in RANK:
        return parts[1], RANK[parts[1]]
    return module, ROOT_RANK[module]


def layering_violations(modules: dict[str, Path], edges: dict[str, set[str]]) -> list[str]:
    """Every project import that goes sideways or up and is not in `ALLOWED`."""
    bad = []
    for src, targets in sorted(edges.items()):
        src_pkg, src_rank = _rank(src)
        for dst in sorted(targets):
            dst_pkg, dst_rank = _rank(dst)
            if dst_pkg == src_pkg or dst_rank < src_rank or (src, dst) in ALLOWED:
                continue
            way = "beside" if dst_rank == src_rank else "above"
            bad.append(f"{src} imports {dst} ({dst_pkg} is {way} {src_pkg})")
    return bad


def split_names(module: str, names: set[str], modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(the project modules among ``names``, the outside top-level packages among them)."""
    inner = {r for n in names if n.split(".")[0] == "stgrl" and (r := _resolve(n, modules))} - {module}
    outer = {n.split(".")[0] for n in names if n.split(".")[0] not in ("stgrl", "", "__future__")}
    return inner, outer


def project_edges(modules: dict[str, Path]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(project modules each module imports, top-level outside packages each module imports)."""
    inner: dict[str, set[str]] = {}
    outer: dict[str, set[str]] = {}
    for name, path in modules.items():
        inner[name], outer[name] = split_names(name, imported_names(name, path), modules)
    return inner, outer


def reaches(start: str, inner: dict[str, set[str]], outer: dict[str, set[str]], banned: tuple[str, ...],
            ) -> list[str]:
    """Import chains from ``start`` to a ``banned`` outside package, through project modules."""
    chains, seen, stack = [], {start}, [[start]]
    while stack:
        chain = stack.pop()
        chains += [" -> ".join([*chain, b]) for b in banned if b in outer[chain[-1]]]
        for nxt in sorted(inner[chain[-1]] - seen):
            seen.add(nxt)
            stack.append([*chain, nxt])
    return chains


@pytest.fixture(scope="module")
def graph():
    modules = project_modules()
    return modules, *project_edges(modules)


def test_every_package_is_parsed(graph):
    modules, _, _ = graph
    for pkg in RANK:
        assert f"stgrl.{pkg}" in modules, f"no __init__ for {pkg}"
    assert len(modules) > 100, len(modules)  # the scan really covers the code
    assert {m.split(".")[1] for m in modules if m.count(".")} >= set(RANK)


def test_imports_run_one_way(graph):
    modules, inner, _ = graph
    bad = layering_violations(modules, inner)
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_every_allowed_exception_is_still_needed(graph):
    """An exception that no longer happens is removed, so the list stays the truth."""
    _, inner, _ = graph
    stale = [f"{src} -> {dst}" for src, dst in ALLOWED if dst not in inner.get(src, set())]
    assert not stale, f"ALLOWED lists imports that no longer exist: {stale}"


def test_pure_cores_import_no_ray_or_zeromq(graph):
    modules, inner, outer = graph
    missing = [m for m in PURE_CORES if m not in modules]
    assert not missing, f"pure cores that do not exist: {missing}"
    chains = [c for m in PURE_CORES for c in reaches(m, inner, outer, FORBIDDEN_IN_CORES)]
    assert not chains, "pure cores reaching Ray or ZeroMQ:\n" + "\n".join(chains)


def _with_extra(graph, module: str, source: str, tmp_path: Path):
    """The graph with ``source`` appended to ``module`` (the checks must see a planted import)."""
    modules, inner, outer = graph
    planted = tmp_path / "planted.py"
    planted.write_text(modules[module].read_text() + "\n" + source)
    extra_inner, extra_outer = split_names(module, imported_names(module, planted), modules)
    return modules, {**inner, module: extra_inner}, {**outer, module: extra_outer}


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("stgrl.transport.wire", "from stgrl.reward_service.types import Score\n",
     "stgrl.transport.wire imports stgrl.reward_service.types (reward_service is above transport)"),
    ("stgrl.reward_service.rewards", "def f():\n    from stgrl.learner import gspo\n",
     "stgrl.reward_service.rewards imports stgrl.learner.gspo (learner is beside reward_service)"),
    ("stgrl.actors.rollout_worker", "import stgrl.orchestration.config\n",
     "stgrl.actors.rollout_worker imports stgrl.orchestration.config (orchestration is above actors)"),
    ("stgrl.transport.config", "from .. import explain\nfrom ..actors import rollout_worker\n",
     "stgrl.transport.config imports stgrl.actors.rollout_worker (actors is above transport)"),
])
def test_a_planted_layering_violation_is_caught(graph, module, source, expected, tmp_path):
    modules, inner, _ = _with_extra(graph, module, source, tmp_path)
    assert layering_violations(modules, inner) == [expected]


@pytest.mark.parametrize(("module", "source"), [
    ("stgrl.learner.gspo", "def f():\n    import ray\n"),
    ("stgrl.reward_service.geometry", "from stgrl.transport.endpoints import ServerSocket\n"),  # zmq, indirectly
])
def test_a_planted_ray_or_zeromq_import_in_a_core_is_caught(graph, module, source, tmp_path):
    modules, inner, outer = _with_extra(graph, module, source, tmp_path)
    assert not reaches(module, *graph[1:], FORBIDDEN_IN_CORES)
    assert reaches(module, inner, outer, FORBIDDEN_IN_CORES)
