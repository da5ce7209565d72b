"""Imports inside `discritune_trl` go one way. The layers, lowest first:

1. `utils` (images, data loading, open_clip helpers)
2. `models` | `retrievers` (independent: a retriever never imports a captioner, nor the reverse)
3. `rewards` | `evaluation` (independent of each other; rewards read retrievers, evaluation reads both)
4. `trainer`
5. `discritune_trl` itself (the package `__init__`: its public names)
6. `world` (the embedded job)
7. `scripts` (the command line: `discritune-trl` and the scripts it runs)
8. `testing` (tiny models of every kind, for tests), above all

A module may import its own subpackage and any lower layer, never a layer above it nor a peer in its own layer.
Module-level and function-level imports count alike, relative and absolute. Also: a checkpoint converter
(`convert_*.py`) imports its modeling file (`modeling_*.py`), never the reverse; and a function-level import of
another `discritune_trl` module is not allowed (a cycle is broken by structure, not by deferring an import).
"""

from __future__ import annotations

import ast
import os

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "discritune_trl"
ROOT_UNIT = PACKAGE  # the package's own __init__
LAYERS = (
    ("utils",),
    ("models", "retrievers"),
    ("rewards", "evaluation"),
    ("trainer",),
    (ROOT_UNIT,),
    ("world",),
    ("scripts",),
    ("testing",),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
# (importing module, imported module): known exceptions, each with the reason it is still there. An entry that no
# longer matches any import fails `test_known_exceptions_are_still_needed`: then delete it.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def unit_of(module: str) -> str:
    """`discritune_trl.models.policy` -> `models`; the package itself -> `discritune_trl`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT_UNIT


def _is_subpackage(name: str) -> bool:
    return os.path.isdir(os.path.join(ROOT, PACKAGE, name))


def imported_modules(module: str, is_package: bool, source: str) -> list[tuple[str, int, bool]]:
    """`(imported discritune_trl module, line, inside a function)` for every import of the package in `source`."""
    package = module if is_package else module.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                # `from discritune_trl import world` names a subpackage, `from . import x` a module of `package`
                if target == PACKAGE:
                    targets = [f"{PACKAGE}.{a.name}" if _is_subpackage(a.name) else PACKAGE for a in child.names]
                else:
                    targets = [target]
            for target in targets:
                if target == PACKAGE or target.startswith(PACKAGE + "."):
                    found.append((target, child.lineno, in_function))
            visit(child, nested)

    visit(ast.parse(source), False)
    return found


def layer_violations(module: str, is_package: bool, source: str) -> list[str]:
    """Every import in `source` (the code of `module`) that breaks the layering, as readable lines."""
    problems = []
    source_unit = unit_of(module)
    if source_unit not in RANK:
        return [f"{module}: subpackage {source_unit!r} is in no layer; add it to LAYERS in tests/test_layering.py"]
    for target, line, in_function in imported_modules(module, is_package, source):
        if (module, target) in KNOWN_EXCEPTIONS:
            continue
        where = f"{module}:{line} imports {target}"
        target_unit = unit_of(target)
        if target_unit not in RANK:
            problems.append(f"{where}: {target_unit!r} is in no layer")
        elif target_unit != source_unit and RANK[target_unit] >= RANK[source_unit]:
            relation = "a peer in its own layer" if RANK[target_unit] == RANK[source_unit] else "a layer above it"
            problems.append(f"{where}: {target_unit} is {relation} ({source_unit})")
        if module.rpartition(".")[2].startswith("modeling_") and target.rpartition(".")[2].startswith("convert_"):
            problems.append(f"{where}: a modeling file never imports its checkpoint converter (the reverse is fine)")
        if in_function:
            problems.append(f"{where} inside a function: import it at module level (restructure if it is a cycle)")
    return problems


def package_modules() -> list[tuple[str, bool, str]]:
    modules = []
    for folder, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
            is_package = parts[-1] == "__init__"
            module = ".".join(parts[:-1] if is_package else parts)
            with open(path, encoding="utf-8") as handle:
                modules.append((module, is_package, handle.read()))
    return modules


def test_imports_go_one_way():
    problems = [problem for module in package_modules() for problem in layer_violations(*module)]
    assert not problems, "Imports against the layering (see tests/test_layering.py):\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "module, is_package, source",
    [
        (f"{PACKAGE}.retrievers.my_retriever", False, "from ..models.policy import CaptioningPolicy"),
        (f"{PACKAGE}.retrievers.my_retriever", False, "import discritune_trl.models.clipcap.modeling_clipcap"),
        (f"{PACKAGE}.retrievers", True, "from ..models import ClipCapPolicy"),
        (f"{PACKAGE}.retrievers.my_retriever", False, "def f():\n    from discritune_trl.models import policy"),
        (f"{PACKAGE}.utils.images", False, "from ..trainer.batch import DiscriTuneBatch"),
        (f"{PACKAGE}.rewards.reward_model", False, "from ..evaluation.retrieval import precision_at_1"),
        (f"{PACKAGE}.trainer.collator", False, "from discritune_trl import DiscriTuneConfig"),
        (f"{PACKAGE}.trainer.collator", False, "from .. import world"),
        (f"{PACKAGE}.models.clipcap.modeling_clipcap", False, "from .convert_original import load"),
        (f"{PACKAGE}.trainer.collator", False, "def f():\n    from .batch import DiscriTuneBatch"),
        (f"{PACKAGE}.world.job", False, "from ..scripts.train import main"),
    ],
)
def test_the_checker_flags_imports_against_the_layering(module, is_package, source):
    assert layer_violations(module, is_package, source)


@pytest.mark.parametrize(
    "module, is_package, source",
    [
        (
            f"{PACKAGE}.retrievers.my_retriever",
            False,
            "from ..utils.images import to_rgb\nfrom .base import Retriever",
        ),
        (f"{PACKAGE}.models.clipcap.convert_original", False, "from .modeling_clipcap import ClipCapPolicy"),
        (f"{PACKAGE}.evaluation.suite", False, "from ..models.policy import CaptioningPolicy\nimport torch"),
        (
            f"{PACKAGE}.world.job",
            False,
            "from ..trainer import DiscriTuneTrainer\nfrom discritune_trl import Retriever",
        ),
        (f"{PACKAGE}.testing.world", False, "from ..world import WorldConfig"),
        (
            f"{PACKAGE}.scripts.train",
            False,
            "from ..world import run_world_job\nfrom ..trainer import DiscriTuneConfig",
        ),
        (PACKAGE, True, "from .trainer import DiscriTuneTrainer"),
        (f"{PACKAGE}.evaluation.language", False, "def f():\n    import spacy"),
    ],
)
def test_the_checker_accepts_imports_that_go_down(module, is_package, source):
    assert layer_violations(module, is_package, source) == []


def test_known_exceptions_are_still_needed():
    imports = {
        (module, target) for module, is_package, source in package_modules()
        for target, _, _ in imported_modules(module, is_package, source)
    }  # fmt: skip
    stale = [pair for pair in KNOWN_EXCEPTIONS if pair not in imports]
    assert not stale, f"These imports are gone: delete them from KNOWN_EXCEPTIONS in tests/test_layering.py: {stale}"
