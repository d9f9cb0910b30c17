"""The package layering of lib/ (docs/ARCHITECTURE.md, "Layers"): imports point one way, no cycles, no private
names across modules, no torch in the control core, no sys.path edits in scripts.

    common  <-  control  <-  llm
    common  <-  blt  (blt uses control only in lib/blt/data.py, to write its demo corpus)

Every import counts, also one inside a function: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

ALLOWED = {
    "common": {"common"},
    "control": {"common", "control"},
    "llm": {"common", "control", "llm"},
    "blt": {"common", "blt"},
}
EXCEPTIONS = {("lib/blt/data.py", "control")}  # the demo corpus holds problem statements
NO_DEEP_LEARNING = {"control": ("torch", "transformers", "trl", "peft", "accelerate", "datasets")}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names imported from it, line) for every import statement in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
    return found


def layering_violations(root: Path) -> list[str]:
    """What breaks the rules in root/lib: upward or sideways imports, deep-learning imports in the control core,
    private names imported from another module, and import cycles between modules."""
    problems = []
    graph: dict[str, set[str]] = {}
    for path in sorted((root / "lib").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        name = module_name(path, root)
        package = name.split(".")[1] if name.count(".") >= 1 else None
        graph[name] = set()
        for module, names, line in imports_of(path):
            top = module.split(".")[0]
            if package in NO_DEEP_LEARNING and top in NO_DEEP_LEARNING[package]:
                problems.append(f"{rel}:{line} imports {module}: lib/{package} must not need {top}")
            if top != "lib":
                continue
            target = module.split(".")[1] if module.count(".") >= 1 else None
            if package and target and target not in ALLOWED[package] and (rel, target) not in EXCEPTIONS:
                problems.append(f"{rel}:{line} imports {module}: lib/{package} may not use lib/{target}")
            private = [n for n in names if n.startswith("_")]
            if private:
                problems.append(f"{rel}:{line} imports private {', '.join(private)} from {module}")
            if module != name:
                graph[name].add(module)
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle found by a depth-first search over the module graph (edges to unknown modules ignored)."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_lib_imports_point_one_way_without_cycles():
    assert layering_violations(ROOT) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"lib/control/a.py": "from lib.llm.models import EMBEDDED\n"}, "lib/control may not use lib/llm"),
        (
            {"lib/common/a.py": "def f():\n    import lib.control.systems\n"},
            "lib/common may not use lib/control",
        ),
        ({"lib/blt/model.py": "from lib.llm.plots import COLORS\n"}, "lib/blt may not use lib/llm"),
        (
            {"lib/blt/model.py": "from lib.control.systems import SYSTEMS\n"},
            "lib/blt may not use lib/control",
        ),
        ({"lib/control/a.py": "import torch\n"}, "must not need torch"),
        ({"lib/llm/a.py": "from lib.llm.b import _helper\n", "lib/llm/b.py": ""}, "imports private _helper"),
        (
            {"lib/llm/a.py": "import lib.llm.b\n", "lib/llm/b.py": "from lib.llm.a import x\n"},
            "import cycle: lib.llm.a -> lib.llm.b -> lib.llm.a",
        ),
    ],
)
def test_the_check_catches_each_kind_of_violation(tmp_path, files, expected):
    problems = layering_violations(_tree(tmp_path, files))
    assert any(expected in p for p in problems), problems


def test_the_check_accepts_the_allowed_directions(tmp_path):
    files = {
        "lib/llm/a.py": "from lib.control.systems import SYSTEMS\nfrom lib.common.errors import UsageError\n",
        "lib/control/systems.py": "from lib.common.errors import UsageError\n",
        "lib/common/errors.py": "",
        "lib/blt/data.py": "from lib.control.systems import SYSTEMS\n",
    }
    assert layering_violations(_tree(tmp_path, files)) == []


def test_no_private_names_are_imported_by_scripts():
    found = [
        f"{path.name}:{line} {module} {name}"
        for path in sorted((ROOT / "scripts").rglob("*.py"))
        for module, names, line in imports_of(path)
        for name in names
        if module.startswith("lib") and name.startswith("_")
    ]
    assert found == []


def test_scripts_do_not_edit_sys_path():
    offenders = [p.name for p in sorted((ROOT / "scripts").rglob("*.py")) if "sys.path" in p.read_text()]
    assert offenders == []


def test_importing_the_byte_model_loads_no_control_code(tmp_path):
    """`import lib.blt.training` (what main_trainer does for a blt config) must not load the dataset code,
    the reference solvers or the rewards."""
    code = (
        "import sys, lib.blt.training, lib.blt.analysis\n"
        "print(sorted(m for m in sys.modules if m.startswith(('lib.control', 'lib.llm'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.strip() == "[]"
