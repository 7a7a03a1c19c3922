"""The package's layers: every ``trsplat`` import points down (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "trsplat"

# layer of each top-level module or subpackage of trsplat; a module may import its own layer and lower ones
LAYERS = {
    "errors": 0, "io_utils": 0, "machine": 0, "process_tuning": 0, "camera": 0, "gaussians": 0, "data": 0,
    "render": 1,
    "loss": 2, "metrics": 2, "lpips_net": 2, "synthetic": 2,
    "optim": 3,
    "strategy": 4,
    "config": 5, "training": 5,
    "bench": 6, "viewer": 6, "cli": 6,
    "command": 7, "__main__": 7,
}
# optim works on plain tensors: it sees neither rendering nor losses nor Gaussians
FORBIDDEN = {"optim": {"render", "loss", "metrics", "lpips_net", "gaussians", "camera", "data", "synthetic"}}


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def _top(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _trsplat_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("trsplat.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("trsplat"):
            if node.module == "trsplat":
                names |= {f"trsplat.{a.name}" for a in node.names}
            else:
                names.add(node.module)
    return {n.split(".")[1] for n in names if n.count(".") >= 1}


def test_every_module_has_a_layer() -> None:
    assert {_top(p) for p in _modules()} - {"__init__"} <= set(LAYERS)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path: Path) -> None:
    top = _top(path)
    if top == "__init__":
        return
    for target in _trsplat_imports(path):
        assert LAYERS[target] <= LAYERS[top], f"{path.relative_to(SRC)} imports trsplat.{target} (a higher layer)"
        assert target not in FORBIDDEN.get(top, set()), f"{path.relative_to(SRC)} imports trsplat.{target}"


# The project's planning notes outside the repository (a fresh clone has none of them), built from
# parts so that this file does not itself name them; code and tests also never read the datasets'
# folder by path (docs may record the data a measured command used).
NOTES = tuple("".join(parts) for parts in (("shared/", "paper"), ("3dgs-", "conventions"), ("3dgs2-tr-", "spec"),
                                           ("spec ", "§")))
DATA = "".join(("shared/", "data"))


def test_no_code_points_outside_the_repository() -> None:
    """Code, tests and docs point at docs/, never at files a fresh clone lacks."""
    root = SRC.parents[1]
    code = [*_modules(), *sorted((root / "tests").glob("*.py"))]
    for path in [*code, *sorted((root / "docs").glob("*.md")), root / "README.md"]:
        text = path.read_text()
        for marker in NOTES + ((DATA,) if path in code else ()):
            assert marker not in text, f"{path.relative_to(root)} mentions {marker!r}"
