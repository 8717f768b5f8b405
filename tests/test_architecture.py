"""The layering of ARCHITECTURE.md, checked by walking imports with ast: imports point downward only, no package
reaches into another's private names, and functions fit on a screen."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "resnetkit"

# Higher numbers may import lower ones (and their own package). docs/ARCHITECTURE.md draws the same table.
LEVELS = {
    "cli": 9,
    **dict.fromkeys(["workflows", "serve", "bench", "experiments", "report", "audit"], 8),
    **dict.fromkeys(["runtime", "explain", "tasks"], 7),
    **dict.fromkeys(["engine", "export"], 6),
    **dict.fromkeys(["data", "optim", "checkpoint", "compress"], 5),
    "models": 4,
    "weights": 3,
    **dict.fromkeys(["layers", "transforms", "metrics", "distributed", "fetch", "files", "plots", "hardware"], 2),
    **dict.fromkeys(["config", "model_registry", "extras"], 1),
    **dict.fromkeys(["constants", "errors"], 0),
}
# Named before they are written ("Where the next modules go"): drop a name from here with its first file.
PLANNED: set[str] = set()
# Imports that the levels would allow but the design does not: the service reaches models only through runtime.
FORBIDDEN = {"serve": {"engine"}}
DOC = PACKAGE.parents[1] / "docs" / "ARCHITECTURE.md"
ENTRY_POINTS = {"__init__", "__main__"}
MAX_FUNCTION_LINES = 60  # ARCHITECTURE.md: "functions short enough to read on one screen", on ruff-formatted code


def _top(module_path: Path) -> str:
    rel = module_path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _module_name(path: Path) -> str:
    """resnetkit.engine.fastpath for engine/fastpath.py; resnetkit.engine.__init__ for a package's __init__.py."""
    return ".".join(("resnetkit", *path.relative_to(PACKAGE).with_suffix("").parts))


def _imports(tree: ast.AST, module: str) -> list[str]:
    """Every dotted name `module` imports: `import a.b` gives a.b, `from a import b, c` gives a.b and a.c, and a
    relative import is resolved against the module's package (`from ..data import loader` -> resnetkit.data.loader)."""
    package = module.rsplit(".", 1)[0].split(".")
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # `.` is the module's package, `..` its parent
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            names += [base if a.name == "*" else f"{base}.{a.name}" for a in node.names]
    return names


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _layer_violations(module: str, source: str) -> list[str]:
    """The imports of `module` (given its source) that point to its own level or above, or to an entry point."""
    own = module.split(".")[1]
    bad = []
    for name in _imports(ast.parse(source), module):
        parts = name.split(".")
        if parts[0] != "resnetkit" or len(parts) < 2 or parts[1] == own:
            continue
        if parts[1] not in LEVELS and parts[1] not in ENTRY_POINTS:
            continue  # a name defined in resnetkit/__init__.py (`from resnetkit import __version__`)
        if parts[1] in ENTRY_POINTS or LEVELS[parts[1]] >= LEVELS[own] or parts[1] in FORBIDDEN.get(own, ()):
            bad.append(f"{module} imports {name}")
    return bad


def _private_import_violations(module: str, source: str) -> list[str]:
    """Imports of a `_private` module or name of ANOTHER resnetkit package (the first component under resnetkit:
    `engine`, `data`, or a top-level module). Private names are shared inside a package, never across."""
    own = module.split(".")[1]
    bad = []
    for name in _imports(ast.parse(source), module):
        parts = name.split(".")
        if parts[0] == "resnetkit" and len(parts) > 1 and parts[1] != own and any(map(_is_private, parts[1:])):
            bad.append(f"{module} imports {name}")
    return bad


def _long_functions(module: str, source: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Functions and methods (nested ones too) of more than `limit` lines, from `def` to their last line."""
    return [
        f"{module}.{node.name} (line {node.lineno}): {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit
    ]


def _library_files() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if _top(p) not in ENTRY_POINTS]


def _all_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    existing = {_top(p) for p in _library_files()}
    assert existing <= set(LEVELS)
    assert set(LEVELS) - existing == PLANNED  # every other name in the table is a planned module, and only those
    assert not existing & PLANNED


def _diagram_rows(text: str) -> list[set[str]]:
    """The layer diagram of ARCHITECTURE.md: the module names of each level, top to bottom. Names sit in the first
    30 columns (`/` and the planned `*` dropped); names indented by two spaces continue the level above, and a
    line with an empty first column continues only the description."""
    block = text.split("## Layers", 1)[1].split("```")[1]
    rows: list[set[str]] = []
    for line in block.strip("\n").splitlines():
        names = {n.rstrip("/*") for n in line[:30].split()}
        if names and line.startswith("  "):
            rows[-1] |= names
        elif names:
            rows.append(names)
    return rows


def test_the_documented_layers_are_the_tested_ones() -> None:
    """docs/ARCHITECTURE.md's diagram and LEVELS list the same modules at the same levels, planned ones marked."""
    by_level = [{m for m, lv in LEVELS.items() if lv == level} for level in sorted(set(LEVELS.values()), reverse=True)]
    text = DOC.read_text()
    assert _diagram_rows(text) == by_level
    block = text.split("## Layers", 1)[1].split("```")[1]
    planned = {n.rstrip("/*") for line in block.splitlines() for n in line[:30].split() if n.endswith("*")}
    assert planned == PLANNED


def test_imports_point_downward_only() -> None:
    violations = [v for path in _library_files() for v in _layer_violations(_module_name(path), path.read_text())]
    assert not violations


def test_no_package_imports_another_packages_private_names() -> None:
    """Issue 13: what one package uses of another is that package's public API (`data.loader.mix_seed`,
    `models.ResidualBlock`, `models.get_model_entry`), never `_mix`, `_Block` or a `_registry` module."""
    violations = [v for p in _all_files() for v in _private_import_violations(_module_name(p), p.read_text())]
    assert not violations


def test_no_function_is_longer_than_a_screen() -> None:
    long = [f for path in _all_files() for f in _long_functions(_module_name(path), path.read_text())]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_only_cli_prints_and_only_distributed_touches_torch_distributed() -> None:
    offenders = []
    for path in _library_files():
        tree = ast.parse(path.read_text())
        top = _top(path)
        if top != "cli":
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} prints")
        if top != "distributed" and any(n.startswith("torch.distributed") for n in _imports(tree, _module_name(path))):
            offenders.append(f"{path.relative_to(PACKAGE)} imports torch.distributed")
    assert not offenders


IMAGE_READER = "data/images.py"  # the one image-reading entry point (read_image, image_header)
DECODERS = {"open", "decode_jpeg", "decode_image", "decode_png", "read_image"}


def _decoder_calls(source: str) -> list[int]:
    """Lines that open or decode an image file: PIL's Image.open, torchvision.io's decoders and read_image."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in DECODERS:
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id in {"Image", "io", "torchvision"}:
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "torchvision.io":
            if any(a.name in DECODERS for a in node.names):
                lines.append(node.lineno)
    return lines


def test_only_the_image_reader_decodes_image_files() -> None:
    """One set of rules for orientation, alpha, modes and truncation: every other module calls data.images."""
    offenders = [
        f"{path.relative_to(PACKAGE)}:{line}"
        for path in _all_files()
        if str(path.relative_to(PACKAGE)) != IMAGE_READER
        for line in _decoder_calls(path.read_text())
    ]
    assert not offenders, f"image files opened outside {IMAGE_READER}: {offenders}"


def test_the_decoder_checker_catches_a_violation() -> None:
    source = "from PIL import Image\nwith Image.open(p) as im:\n    pass\nfrom torchvision.io import decode_jpeg\n"
    assert sorted(_decoder_calls(source)) == [2, 4]
    assert _decoder_calls("Image.new('RGB', (1, 1)).save(p)\nopen(p)\n") == []


def _string_sets(source: str, where: str) -> dict[tuple[str, ...], list[str]]:
    """Literal tuples, lists and sets of 3 or more strings (choice lists), as sorted tuples -> where they are."""
    found: dict[tuple[str, ...], list[str]] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 3:
            if all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                key = tuple(sorted(e.value for e in node.elts))  # type: ignore[attr-defined]
                found.setdefault(key, []).append(f"{where}:{node.lineno}")
    return found


def _repeated_sets(sources: dict[str, str]) -> dict[tuple[str, ...], list[str]]:
    merged: dict[tuple[str, ...], list[str]] = {}
    for where, source in sources.items():
        for key, places in _string_sets(source, where).items():
            merged.setdefault(key, []).extend(places)
    return {key: places for key, places in merged.items() if len(places) > 1}


def test_each_choice_set_is_defined_once() -> None:
    """Issue 29: a set of choices (schedules, policies, data modes ...) is written once and imported elsewhere."""
    sources = {str(p.relative_to(PACKAGE)): p.read_text() for p in _all_files()}
    assert _repeated_sets(sources) == {}


def test_the_choice_set_checker_catches_a_repeat() -> None:
    sources = {
        "a.py": 'MODES = ("auto", "memory", "stream")\n',
        "b.py": 'x = ["stream", "auto", "memory"]\ny = ("a", "b")\n',
    }
    assert _repeated_sets(sources) == {("auto", "memory", "stream"): ["a.py:1", "b.py:1"]}


def test_the_checker_catches_a_violation() -> None:
    source = (
        "from resnetkit.engine import train\nimport resnetkit.cli.main\nfrom ..engine import loop\n"
        "from . import blocks\nfrom .blocks import BasicBlock\nfrom resnetkit.weights import io\n"
        "from resnetkit import distributed, __version__\nimport resnetkit.__main__\nimport torch\n"
    )
    assert _imports(ast.parse(source), "resnetkit.models.fake")[:5] == [
        "resnetkit.engine.train",
        "resnetkit.cli.main",
        "resnetkit.engine.loop",
        "resnetkit.models.blocks",
        "resnetkit.models.blocks.BasicBlock",
    ]
    assert _layer_violations("resnetkit.models.fake", source) == [
        "resnetkit.models.fake imports resnetkit.engine.train",
        "resnetkit.models.fake imports resnetkit.cli.main",
        "resnetkit.models.fake imports resnetkit.engine.loop",
        "resnetkit.models.fake imports resnetkit.__main__",
    ]
    # a package's __init__.py resolves `.` to the package itself
    assert _imports(ast.parse("from . import zoo\n"), "resnetkit.models.__init__") == ["resnetkit.models.zoo"]
    assert _layer_violations("resnetkit.data.__init__", "from ..engine.loop import train_step\n")
    # the service reaches models through runtime/ only, although engine/ is below it
    assert _layer_violations("resnetkit.serve.app", "from resnetkit.engine import fastpath\n")
    assert not _layer_violations("resnetkit.serve.app", "from resnetkit.runtime import Predictor\n")


def test_the_private_import_checker_catches_a_violation() -> None:
    source = (
        "from resnetkit.data.loader import _mix\nfrom resnetkit.models.blocks import _Block\n"
        "import resnetkit._registry\nfrom resnetkit import _registry\nfrom ..data._cache import load\n"
        "from resnetkit.engine.loop import _step\nfrom ._helpers import x\nfrom torch._inductor import config\n"
        "from resnetkit import __version__\nfrom resnetkit.models import zoo as _zoo\n"
    )
    assert _private_import_violations("resnetkit.engine.fake", source) == [
        "resnetkit.engine.fake imports resnetkit.data.loader._mix",
        "resnetkit.engine.fake imports resnetkit.models.blocks._Block",
        "resnetkit.engine.fake imports resnetkit._registry",
        "resnetkit.engine.fake imports resnetkit._registry",
        "resnetkit.engine.fake imports resnetkit.data._cache.load",
    ]


def test_the_long_function_checker_catches_a_violation() -> None:
    def function(name: str, lines: int, indent: str = "", kind: str = "def") -> str:
        """Source of a function exactly `lines` lines long: its `def` line and lines - 1 statements."""
        return f"{indent}{kind} {name}():\n" + "".join(f"{indent}    x = {i}\n" for i in range(lines - 1))

    source = function("fits", 60) + "class A:\n" + function("too_long", 61, "    ", "async def")
    assert _long_functions("resnetkit.fake", source) == ["resnetkit.fake.too_long (line 62): 61 lines"]
    assert _long_functions("resnetkit.fake", "def outer():\n" + function("inner", 61, "    ")) == [
        "resnetkit.fake.outer (line 1): 62 lines",
        "resnetkit.fake.inner (line 2): 61 lines",
    ]


def test_only_the_distributed_module_touches_torch_distributed() -> None:
    """ARCHITECTURE.md / issue 6: one module holds every torch.distributed call (and DDP)."""
    touching = []
    for path in _library_files():
        text = path.read_text()
        names = _imports(ast.parse(text), _module_name(path))
        if any(n.startswith(("torch.distributed", "torch.nn.parallel")) for n in names) or "torch.distributed" in text:
            touching.append(str(path.relative_to(PACKAGE)))
    assert touching == ["distributed.py"]


def _file_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """Module -> the resnetkit modules (files) it imports, local and TYPE_CHECKING imports included: `from a.b import
    c` is the file a/b/c.py where it exists, else a/b.py or the package a/b/__init__.py."""
    graph: dict[str, set[str]] = {}
    for module, source in sources.items():
        edges = set()
        for name in _imports(ast.parse(source), module):
            parts = name.split(".")
            while parts and ".".join(parts) not in sources and ".".join([*parts, "__init__"]) not in sources:
                parts = parts[:-1]
            if len(parts) > 1:  # resnetkit's own modules (not resnetkit/__init__.py: every import passes it)
                edges.add(".".join(parts) if ".".join(parts) in sources else ".".join([*parts, "__init__"]))
        graph[module] = edges - {module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others (strongly connected components of
    more than one module), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_no_two_files_import_each_other() -> None:
    """Issue 29: no import cycle between files, counting imports inside functions and under TYPE_CHECKING (which hide
    a cycle from the interpreter, not from the reader)."""
    sources = {_module_name(p): p.read_text() for p in _all_files()}
    assert _cycles(_file_graph(sources)) == []


def test_the_cycle_checker_catches_a_cycle() -> None:
    sources = {
        "resnetkit.serve.app": "from resnetkit.serve.requests import read\nclass Settings: ...\n",
        "resnetkit.serve.requests": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from resnetkit.serve.app import Settings\n",
        "resnetkit.cli.main": "def main():\n    from resnetkit.cli import predict_cmd\n",
        "resnetkit.cli.predict_cmd": "def run():\n    from resnetkit.cli.main import warn\n",
        "resnetkit.cli.__init__": "",
        "resnetkit.data.folder": "from resnetkit.errors import DataError\n",
        "resnetkit.errors": "",
    }
    assert _cycles(_file_graph(sources)) == [
        ["resnetkit.cli.main", "resnetkit.cli.predict_cmd"],
        ["resnetkit.serve.app", "resnetkit.serve.requests"],
    ]
