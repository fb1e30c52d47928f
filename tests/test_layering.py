"""Dependencies between minibert's modules flow one way: down the table of layers below.

A module may import modules of its own layer and of the layers below it, never of a layer
above; no modules may import each other in a cycle, within a layer or across layers. Every
import statement counts, wherever it stands: at module level, inside a function (a lazy
import), under ``if TYPE_CHECKING:``, and ``importlib.import_module("literal.name")``.
Imports by computed names (``import_module(name)``) are not seen.

How an import is read:

* ``import minibert.ops.linear``, ``from minibert.ops import linear``, ``from .ops import
  linear`` and ``from . import ops`` (in ``minibert/x.py``) name a module: that module is the
  one imported.
* ``from minibert.ops import linear_forward`` names something that is not a module: the
  import is of the package ``minibert.ops`` (its ``__init__.py``).
* ``import minibert`` and ``from minibert import BertModel`` (or ``from . import BertModel``
  at the top of the package) reach the package facade ``minibert/__init__.py``, which
  imports from every layer: only the top layer may use it.

To change the rules, edit ``LAYERS``: top to bottom, each layer a name and a list of
``fnmatch`` patterns over dotted module names (``*`` also matches dots). Every module of the
package must match a pattern; the first layer that matches holds it.
"""

from __future__ import annotations

import ast
import fnmatch
import os
from pathlib import Path

import pytest

PACKAGE = "minibert"

LAYERS = [
    ("command line", ["minibert.cli", "minibert.cli_*", "minibert.pretrain"]),
    ("applications and the training loop", [
        "minibert.training", "minibert.finetune", "minibert.prune", "minibert.attention_maps",
        "minibert.sentence_embeddings", "minibert.fill_mask", "minibert.plots", "minibert.sweep",
        "minibert.noise_scale", "minibert.distill"]),
    ("model, heads, optimizer, data, checkpoints, tokenizer", [
        "minibert.modeling", "minibert.heads", "minibert.optim", "minibert.data", "minibert.data.*",
        "minibert.checkpoint", "minibert.safetensors", "minibert.tokenization", "minibert.bpe",
        "minibert.vocab_trainer", "minibert.gradcheck", "minibert.roberta", "minibert.distilbert", "minibert.distributed"]),
    ("configuration, input checks and modules", [
        "minibert.config", "minibert.validation", "minibert.nn", "minibert.layers"]),
    ("the op registry", ["minibert.registry"]),
    ("the speed wing", ["minibert.fast", "minibert.fast.*"]),
    ("ops", ["minibert.ops", "minibert.ops.*"]),
    ("backend", ["minibert.backend"]),
]

# Modules whose own imports are not checked and that need no place in the table. Importing
# one of them is allowed only from the top layer.
EXEMPT = ["minibert"]          # the package facade, minibert/__init__.py

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------
# The checker
# --------------------------------------------------------------------------------------

def find_modules(package_dir: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is_package) for every ``.py`` file under ``package_dir``."""
    modules = {}
    for dirpath, dirnames, filenames in os.walk(package_dir):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        relative = Path(dirpath).relative_to(package_dir).parts
        for filename in sorted(filenames):
            if not filename.endswith(".py"):
                continue
            stem = filename[:-3]
            if stem == "__init__":
                name, is_package = ".".join((package, *relative)), True
            else:
                name, is_package = ".".join((package, *relative, stem)), False
            modules[name] = (Path(dirpath) / filename, is_package)
    return modules


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` written in ``module``."""
    parts = module.split(".") if is_package else module.split(".")[:-1]   # the enclosing package
    if level - 1 > len(parts) - 1:
        raise ValueError(f"{module}: relative import beyond the top-level package")
    base = parts[:len(parts) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(module: str, path: Path, is_package: bool, package: str, known) -> list[tuple[str, int]]:
    """(imported module of ``package``, line) for every import in one file.

    ``known`` holds the package's module names: ``from x import y`` imports the module
    ``x.y`` when there is one, else ``x``. A name that is no module is returned as it is,
    for the caller to flag.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []

    def inside(name):
        return name == package or name.startswith(package + ".")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if inside(alias.name):
                    found.append((alias.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve_relative(module, is_package, node.level, node.module)
            else:
                base = node.module or ""
            if not inside(base):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule if submodule in known else base, node.lineno))
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                name = first.value
                if name.startswith("."):
                    level = len(name) - len(name.lstrip("."))
                    name = _resolve_relative(module, is_package, level, name[level:] or None)
                if inside(name):
                    found.append((name, node.lineno))
    return found


def _is_import_module(func) -> bool:
    return ((isinstance(func, ast.Attribute) and func.attr == "import_module")
            or (isinstance(func, ast.Name) and func.id == "import_module"))


def layer_of(module: str, layers) -> int | None:
    """Index (0 = top) of the first layer with a pattern matching ``module``."""
    for index, (_, patterns) in enumerate(layers):
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in patterns):
            return index
    return None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` for each group of modules that import each other
    (strongly connected components with more than one module; Tarjan's algorithm)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = 0

    def visit(node):
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(set(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)

    cycles = []
    for component in components:
        start = min(component)
        # breadth-first search inside the component for the shortest way back to `start`
        paths = {start: [start]}
        queue = [start]
        cycle = None
        while queue and cycle is None:
            node = queue.pop(0)
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    cycle = paths[node] + [start]
                    break
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    queue.append(nxt)
        cycles.append(cycle)
    return sorted(cycles)


def check_layering(package_dir, package: str, layers, exempt=()) -> list[str]:
    """Every breach of the layer table in the package at ``package_dir``, one line each
    (an empty list when the package follows the table)."""
    package_dir = Path(package_dir)
    modules = find_modules(package_dir, package)
    exempt = set(exempt)
    problems = []

    def where(module, line=None):
        path = os.path.relpath(modules[module][0], package_dir.parent)
        return f"{path}:{line}" if line else path

    def describe(index):
        return f"layer {index + 1} ({layers[index][0]})"

    placed = {}
    for module in modules:
        if module in exempt:
            continue
        index = layer_of(module, layers)
        if index is None:
            problems.append(f"{where(module)}: {module} is in no layer; place it in the table")
        else:
            placed[module] = index

    graph = {module: set() for module in modules if module not in exempt}
    for module, (path, is_package) in modules.items():
        if module in exempt:
            continue
        for target, line in imports_of(module, path, is_package, package, modules):
            if target == module:
                continue
            if target not in modules:
                problems.append(f"{where(module, line)}: {module} imports {target}, "
                                "which is no module of the package")
                continue
            if target in exempt:
                if placed.get(module) != 0:
                    problems.append(f"{where(module, line)}: {module} imports {target}, which only "
                                    f"{describe(0)} may import; import from the defining module")
                continue
            graph[module].add(target)
            mine, theirs = placed.get(module), placed.get(target)
            if mine is not None and theirs is not None and theirs < mine:
                problems.append(f"{where(module, line)}: {module} in {describe(mine)} imports "
                                f"{target} from {describe(theirs)}, above it")

    for cycle in find_cycles(graph):
        problems.append("import cycle: " + " -> ".join(cycle))
    return problems


# --------------------------------------------------------------------------------------
# The real package
# --------------------------------------------------------------------------------------

def test_minibert_follows_the_layer_table():
    problems = check_layering(ROOT / PACKAGE, PACKAGE, LAYERS, EXEMPT)
    assert not problems, f"{len(problems)} breaches of the layer table:\n" + "\n".join(problems)


def test_the_layer_table_is_well_formed():
    names = [name for name, _ in LAYERS]
    assert len(names) == len(set(names))
    for name, patterns in LAYERS:
        assert patterns, f"layer {name!r} has no patterns"
        assert all(p.startswith(PACKAGE) for p in patterns), patterns
    patterns = [p for _, ps in LAYERS for p in ps]
    assert len(patterns) == len(set(patterns)), "a pattern stands in two places"


# --------------------------------------------------------------------------------------
# The checker fails when it should: small packages written in tmp_path
# --------------------------------------------------------------------------------------

FAKE_LAYERS = [
    ("top", ["pkg.top"]),
    ("high", ["pkg.high", "pkg.sub", "pkg.sub.*"]),
    ("low", ["pkg.low", "pkg.low_*"]),
]


def write_package(root: Path, files: dict[str, str]) -> Path:
    """Write ``{"pkg/low.py": source, ...}`` under ``root``; return the package folder."""
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return root / "pkg"


def base_package(**overrides) -> dict[str, str]:
    files = {
        "pkg/__init__.py": "from .high import f\n",
        "pkg/top.py": "from pkg import f\nfrom . import high, low\n",
        "pkg/high.py": "from .low import g\n\ndef f():\n    return g()\n",
        "pkg/low.py": "def g():\n    return 1\n",
        "pkg/low_extra.py": "",
        "pkg/sub/__init__.py": "",
        "pkg/sub/leaf.py": "",
    }
    files.update(overrides)
    return files


def check(tmp_path, **overrides):
    return check_layering(write_package(tmp_path, base_package(**overrides)), "pkg", FAKE_LAYERS, ["pkg"])


def test_a_package_that_follows_its_table_passes(tmp_path):
    assert check(tmp_path) == []


@pytest.mark.parametrize("source", [
    "import pkg.high\n",
    "import pkg.high as h\n",
    "from pkg import high\n",
    "from pkg.high import f\n",
    "from . import high\n",
    "from .high import f\n",
    "def later():\n    from .high import f\n    return f()\n",
    "import importlib\nhigh = importlib.import_module('pkg.high')\n",
])
def test_an_upward_import_is_reported(tmp_path, source):
    problems = check(tmp_path, **{"pkg/low.py": source, "pkg/high.py": "def f():\n    return 1\n"})
    assert len(problems) == 1, problems
    assert "pkg/low.py:" in problems[0]
    assert "pkg.low in layer 3 (low) imports pkg.high from layer 2 (high), above it" in problems[0]


@pytest.mark.parametrize("source, target", [
    ("from .. import high\n", "pkg.high"),            # from a subpackage, up one level
    ("from ..top import x\n", "pkg.top"),
    ("from . import leaf\n", None),                    # a sibling in the same layer: fine
    ("from pkg.sub import leaf\n", None),
])
def test_relative_imports_are_resolved(tmp_path, source, target):
    files = {"pkg/sub/leaf.py": "", "pkg/sub/other.py": source}
    layers = [("top", ["pkg.top"]), ("high", ["pkg.high", "pkg.low*"]), ("sub", ["pkg.sub", "pkg.sub.*"])]
    package = write_package(tmp_path, base_package(**files))
    problems = check_layering(package, "pkg", layers, ["pkg"])
    if target is None:
        assert problems == []
    else:
        assert len(problems) == 1 and f"imports {target} from layer" in problems[0], problems


def test_a_cycle_within_one_layer_is_reported(tmp_path):
    problems = check(tmp_path, **{
        "pkg/low.py": "from . import low_extra\n",
        "pkg/low_extra.py": "def h():\n    import pkg.low\n",   # lazy, and still a cycle
    })
    assert problems == ["import cycle: pkg.low -> pkg.low_extra -> pkg.low"]


def test_an_unplaced_module_is_reported(tmp_path):
    problems = check(tmp_path, **{"pkg/stray.py": "", "pkg/sub/deeper/__init__.py": ""})
    assert problems == ["pkg/stray.py: pkg.stray is in no layer; place it in the table"]


def test_only_the_top_layer_may_import_the_package_facade(tmp_path):
    problems = check(tmp_path, **{"pkg/high.py": "from pkg import f\n", "pkg/low.py": "import pkg\n"})
    assert sorted(problems) == [
        "pkg/high.py:1: pkg.high imports pkg, which only layer 1 (top) may import; "
        "import from the defining module",
        "pkg/low.py:1: pkg.low imports pkg, which only layer 1 (top) may import; "
        "import from the defining module",
    ]


def test_an_import_of_a_missing_module_is_reported(tmp_path):
    problems = check(tmp_path, **{"pkg/low.py": "from .gone import g\n"})
    assert problems == ["pkg/low.py:1: pkg.low imports pkg.gone, which is no module of the package"]
