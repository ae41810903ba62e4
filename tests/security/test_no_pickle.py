"""Nothing the engine reads is ever unpickled: no pickle, joblib or torch loaders, and every
np.load refuses pickled objects."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_engine_and_kernels_never_unpickle():
    for path in list((ROOT / "engine").rglob("*.py")) + list((ROOT / "kernels").rglob("*.py")):
        if "_pb" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n and n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "cloudpickle", "torch")
                               for n in names), f"{path.name} imports a pickle loader"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                base = node.func.value
                if isinstance(base, ast.Name) and base.id in ("np", "numpy"):
                    flags = {k.arg: k.value for k in node.keywords}
                    assert "allow_pickle" in flags and isinstance(flags["allow_pickle"], ast.Constant) \
                        and flags["allow_pickle"].value is False, f"{path.name}:{node.lineno}: np.load without allow_pickle=False"
