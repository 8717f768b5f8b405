"""The layering of ARCHITECTURE.md, checked by walking imports with ast: imports point downward only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "resnetkit"

# Higher numbers may import lower ones (and their own package). See docs/ARCHITECTURE.md.
LEVELS = {
    "cli": 8,
    **dict.fromkeys(["finetune", "inference", "export", "explain", "serve", "bench", "experiments", "report"], 7),
    "engine": 6,
    **dict.fromkeys(["data", "optim", "checkpoint"], 5),
    "models": 4,
    "weights": 3,
    **dict.fromkeys(["layers", "transforms", "metrics", "distributed", "fetch", "plots"], 2),
    **dict.fromkeys(["config", "_registry"], 1),
    **dict.fromkeys(["constants", "errors"], 0),
}
ENTRY_POINTS = {"__init__", "__main__"}


def _top(module_path: Path) -> str:
    rel = module_path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _library_files() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if _top(p) not in ENTRY_POINTS]


def test_every_module_has_a_layer() -> None:
    assert {_top(p) for p in _library_files()} <= set(LEVELS)


def test_imports_point_downward_only() -> None:
    violations = []
    for path in _library_files():
        own = _top(path)
        for name in _imports(ast.parse(path.read_text())):
            parts = name.split(".")
            if parts[0] != "resnetkit" or len(parts) < 2 or parts[1] == own:
                continue
            if parts[1] in ENTRY_POINTS or LEVELS[parts[1]] >= LEVELS[own]:
                violations.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not violations


def test_only_cli_prints_and_only_distributed_touches_torch_distributed() -> None:
    offenders = []
    for path in _library_files():
        tree = ast.parse(path.read_text())
        top = _top(path)
        if top != "cli":
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} prints")
        if top != "distributed" and any(n.startswith("torch.distributed") for n in _imports(tree)):
            offenders.append(f"{path.relative_to(PACKAGE)} imports torch.distributed")
    assert not offenders


def test_the_checker_catches_a_violation(tmp_path: Path) -> None:
    tree = ast.parse("from resnetkit.engine import train\nimport resnetkit.cli.main\n")
    assert _imports(tree) == ["resnetkit.engine", "resnetkit.cli.main"]
    assert LEVELS["engine"] > LEVELS["models"] and LEVELS["cli"] > LEVELS["engine"]


def test_only_the_distributed_module_touches_torch_distributed() -> None:
    """ARCHITECTURE.md / issue 6: one module holds every torch.distributed call (and DDP)."""
    touching = []
    for path in _library_files():
        text = path.read_text()
        names = _imports(ast.parse(text))
        if any(n.startswith(("torch.distributed", "torch.nn.parallel")) for n in names) or "torch.distributed" in text:
            touching.append(str(path.relative_to(PACKAGE)))
    assert touching == ["distributed.py"]
