"""Guardrails of the package's structure: no import circle, the layers import only downwards, and the
names Tune pickled into sweeps written by earlier versions still resolve.

Both count every import a module can execute: top-level ones and those inside functions (grimp reads
them all); imports under `if TYPE_CHECKING:` never run and are left out.
"""

from __future__ import annotations

import ast
import graphlib
import importlib
import json
import pickletools
import re
from pathlib import Path

import grimp
import pytest
from support.paths import REPO, SWEEP_BEFORE_MOVE


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("ranktune", exclude_type_checking_imports=True)


def test_no_import_circle(graph):
    dependencies = {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}
    try:
        graphlib.TopologicalSorter(dependencies).prepare()
    except graphlib.CycleError as circle:
        chain = " -> ".join(circle.args[1])
        pytest.fail(f"import circle: {chain}")


# SWEEP_BEFORE_MOVE: a sweep directory written before platform/ moved into subpackages (main at c93933a;
# trial checkpoints and plots left out): Tune pickled the names below into it, and `--resume` unpickles them.


def pickled_globals(data: bytes) -> set[tuple[str, str]]:
    """(module, qualified name) of every class or function a pickle refers to, read without unpickling:
    GLOBAL carries both; STACK_GLOBAL takes the last two strings pushed (directly or from the memo)."""
    found: set[tuple[str, str]] = set()
    strings: list[str | None] = []
    memo: dict[int, str | None] = {}
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            module, name = arg.split(" ", 1)
            found.add((module, name))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            strings.append(arg)
        elif op.name == "MEMOIZE":
            memo[len(memo)] = strings[-1] if strings else None
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = strings[-1] if strings else None
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            strings.append(memo.get(arg))
        elif op.name == "STACK_GLOBAL":
            module, name = strings[-2], strings[-1]
            if module is not None and name is not None:
                found.add((module, name))
    return found


def sweep_pickles(directory: Path) -> dict[str, bytes]:
    """Every pickle in a sweep directory: Tune's .pkl files and the cloudpickled values inside its
    experiment_state JSON."""
    pickles = {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*.pkl") if p.stat().st_size > 2}

    def walk(value, where: str) -> None:
        if isinstance(value, dict):
            if value.get("_type") == "CLOUDPICKLE_FALLBACK":
                pickles[f"{where}#{len(pickles)}"] = bytes.fromhex(value["value"])
            for item in value.values():
                walk(item, where)
        elif isinstance(value, list):
            for item in value:
                walk(item, where)
        elif isinstance(value, str) and value.startswith("{"):
            try:
                walk(json.loads(value), where)
            except json.JSONDecodeError:
                pass

    for state in directory.rglob("experiment_state-*.json"):
        walk(json.loads(state.read_text()), str(state.relative_to(directory)))
    return pickles


def resolve(module: str, qualname: str):
    target = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def test_every_name_pickled_into_an_old_sweep_still_resolves():
    pickles = sweep_pickles(SWEEP_BEFORE_MOVE)
    names = {name for data in pickles.values() for name in pickled_globals(data) if name[0].startswith("ranktune")}
    # The scan finds what Tune pickles of ours: the scheduler, the searcher's storage, the callbacks, the
    # memory check. (The trial function is not among them: a resumed Tuner is handed it again.)
    assert ("ranktune.platform.milestones", "MethodAwareASHA") in names, sorted(names)
    assert ("ranktune.platform.tracking", "MlflowTrials") in names, sorted(names)
    assert len(names) >= 8, sorted(names)
    missing = []
    for module, qualname in sorted(names):
        try:
            resolve(module, qualname)
        except (ImportError, AttributeError) as exc:
            missing.append(f"{module}:{qualname} ({exc})")
    assert not missing, "pickled names that no longer resolve (keep a shim at the old path):\n" + "\n".join(missing)


def test_every_import_of_a_ranktune_name_resolves():
    """Imports inside functions run only when the function does: one that names a moved or deleted
    module or name fails here rather than in the middle of a sweep."""
    root = REPO
    broken = []
    for path in sorted(
        [*(root / "ranktune").rglob("*.py"), *(root / "tests").rglob("*.py"), *(root / "benchmarks").glob("*.py")]
    ):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("ranktune"):
                where = f"{path.relative_to(root)}:{node.lineno}"
                try:
                    module = importlib.import_module(node.module)
                except ImportError as exc:
                    broken.append(f"{where} {node.module} ({exc})")
                    continue
                for alias in node.names:
                    if alias.name != "*" and not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            broken.append(f"{where} {node.module}.{alias.name}")
    assert not broken, "imports that fail:\n" + "\n".join(broken)


# The parts of the package, by module prefix (the longest matching prefix wins), and what each may import:
# cli -> {sweep, export, report, serve} -> {tracking, store} -> core -> search_spaces -> trainables. The
# sweep ends by ranking, replicating and checking the target with the report's and export's rules, so it
# may import both; export reads the sweep's results through report; report never imports sweep or export.
# `compat` are the old paths of names Tune pickled into sweeps written before the subpackages.
COMPONENTS = {
    "ranktune.platform.cli": "cli",
    "ranktune.platform.sweep": "sweep",
    "ranktune.platform.report": "report",
    "ranktune.platform.export": "export",
    "ranktune.platform.serve": "serve",
    "ranktune.platform.tracking": "tracking",
    "ranktune.platform.store": "store",
    "ranktune.platform": "core",
    "ranktune.search_spaces": "search_spaces",
    "ranktune.trainables": "trainables",
    "ranktune": "trainables",
}
COMPAT = {  # exact modules: the shims
    "ranktune.platform.trial",
    "ranktune.platform.milestones",
    "ranktune.platform.progress",
    "ranktune.platform.study_storage",
    "ranktune.platform.tracking",
}
BELOW = {
    "trainables": set(),
    "search_spaces": {"trainables"},
    "core": {"search_spaces", "trainables"},
    "store": {"core", "search_spaces", "trainables"},
    "tracking": {"store", "core", "search_spaces", "trainables"},
}
BELOW["report"] = {"tracking"} | BELOW["tracking"]
BELOW["serve"] = BELOW["report"]
BELOW["export"] = {"report"} | BELOW["report"]
BELOW["sweep"] = {"export", "report", "serve"} | BELOW["report"]
BELOW["cli"] = {"sweep", "export", "report", "serve"} | BELOW["report"]
BELOW["compat"] = {"sweep", "store"}


def component(module: str) -> str:
    if module in COMPAT:
        return "compat"
    prefix = max((p for p in COMPONENTS if module == p or module.startswith(p + ".")), key=len)
    return COMPONENTS[prefix]


def test_each_part_imports_only_the_parts_below_it(graph):
    wrong = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            source, target = component(importer), component(imported)
            if source != target and target not in BELOW[source]:
                wrong.append(f"{importer} ({source}) imports {imported} ({target})")
    assert not wrong, "imports against the dependency rule (tests/test_architecture.py):\n" + "\n".join(wrong)


def test_the_layer_rule_sees_an_import_against_it(graph):
    """The rule above is not vacuous: a report module importing the sweep driver is caught."""
    assert component("ranktune.platform.report.table") == "report"
    assert component("ranktune.platform.sweep.driver") not in BELOW["report"]
    assert component("ranktune.platform.tracking.client") == "tracking"
    assert component("ranktune.platform.tracking") == "compat"


def test_nothing_imports_the_compatibility_paths(graph):
    users = [
        f"{importer} imports {compat}"
        for compat in sorted(COMPAT)
        for importer in sorted(graph.find_modules_that_directly_import(compat))
        if not importer.startswith(compat + ".")
    ]
    assert not users, "new code imports the new paths:\n" + "\n".join(users)


def test_reading_a_sweep_does_not_import_ray(tmp_path):
    """`ranktune report` reads a sweep directory: Ray (seconds to import, and a cluster's worth of
    threads) is not needed, and `python -X importtime` shows it is not imported."""
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "sweep"
    shutil.copytree(SWEEP_BEFORE_MOVE, copy)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ranktune.platform.cli", "report", str(copy), "--no-plots"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "winner:" in done.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert "ranktune.platform.report.table" in imported  # importtime saw the report's own modules
    ray = [m for m in imported if m == "ray" or m.startswith("ray.")]
    assert not ray, ray[:5]


def method_spellings(value: str, names: set[str], sections: set[str]) -> list[str]:
    """The words of a string that name a registered method: its name (`"galore_adamw"`), a prefix that
    stands for a family of them (`startswith("galore_")`), or a method's own config section used as a
    switch (`raw["galore"]`, `"relora.warm_start_steps: ..."`, a section name in an f-string)."""
    found = []
    for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?\*?", value):
        bare = word.rstrip("*")
        section = bare.partition(".")[0]
        if bare in names or section in sections:
            found.append(word)
        elif (bare.endswith("_") or word.endswith("*")) and any(n.startswith(bare) for n in names):
            found.append(word)
    return found


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of a module, its classes and functions (prose, not code)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_platform_names_no_method():
    """Method-specific platform behaviour lives in the methods' registry entries: no platform module
    spells a registered method's name."""
    from ranktune.trainables.optim import OPTIMIZERS

    platform = REPO / "ranktune" / "platform"
    spelled = []
    for path in sorted(platform.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in OPTIMIZERS:
                spelled.append(f"{path.relative_to(platform.parent.parent)}:{node.lineno} {node.value!r}")
    assert not spelled, "method names in platform/ (give the registry entry a field instead):\n" + "\n".join(spelled)


def test_platform_spells_no_method_prefix_or_section():
    """Beyond whole names: no family prefix (`startswith("galore_")`), no method's config section as a
    key or in a message (`raw["relora"]`, f"apollo.rank ..."), no attribute access to one
    (`cfg.galore.rank`) in platform code. Docstrings (prose) are left out; generic code reads a
    method's sections through its registry entry (`OptimizerEntry.sections` and the other fields)."""
    from ranktune.trainables.optim import OPTIMIZERS

    names = set(OPTIMIZERS)
    sections = {section for entry in OPTIMIZERS.values() for section in entry.sections}
    platform = REPO / "ranktune" / "platform"
    spelled = []
    for path in sorted(platform.rglob("*.py")):
        tree = ast.parse(path.read_text())
        prose = docstrings(tree)
        for node in ast.walk(tree):
            where = f"{path.relative_to(platform.parent.parent)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
                words = method_spellings(node.value, names, sections)
                spelled += [f"{where} {word!r} in {node.value!r}" for word in words]
            elif isinstance(node, ast.Attribute) and node.attr in sections:
                spelled.append(f"{where} .{node.attr}")
    assert not spelled, "method names in platform/ (give the registry entry a field instead):\n" + "\n".join(spelled)
