"""ssl_lib uses Lightning through its public API only: a minor release may rename anything private.

A private name is one that starts with ``_``: imported from a ``lightning`` module, called on
``super()`` or ``self`` in a class derived from a Lightning class, or a module path with a private
part (``lightning.fabric.utilities._x``), or an import from a module below the documented
packages (``lightning.pytorch.plugins.layer_sync`` instead of ``lightning.pytorch.plugins``).
"""

from __future__ import annotations

import ast
from pathlib import Path

SSL_LIB = Path(__file__).resolve().parent.parent / "ssl_lib"
#: The documented packages a name may be imported from (two or three levels, no deeper).
PUBLIC_DEPTH = 3


def lightning_uses(path: Path) -> list[str]:
    """Private Lightning names used in ``path`` (as "line: what")."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "lightning":
            parts = node.module.split(".")
            if any(p.startswith("_") for p in parts) or len(parts) > PUBLIC_DEPTH:
                found.append(f"{node.lineno}: from {node.module}")
            found += [f"{node.lineno}: {a.name}" for a in node.names if a.name.startswith("_")]
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                found.append(f"{node.lineno}: super().{node.attr}")
    return found


def test_no_private_lightning_api():
    problems = [f"{p.relative_to(SSL_LIB.parent)}:{u}" for p in sorted(SSL_LIB.rglob("*.py")) for u in lightning_uses(p)]
    assert problems == []


def test_the_check_finds_private_uses(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from lightning.fabric.utilities.imports import _IS_INTERACTIVE\n"
                   "from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO\n"
                   "from lightning.pytorch.callbacks import ModelCheckpoint\n"
                   "class C(ModelCheckpoint):\n"
                   "    def f(self, t):\n        return super()._monitor_candidates(t)\n")
    found = lightning_uses(bad)
    assert [f.split(": ")[1] for f in found] == [
        "from lightning.fabric.utilities.imports", "_IS_INTERACTIVE", "from lightning.fabric.plugins.io.torch_io",
        "super()._monitor_candidates"]
