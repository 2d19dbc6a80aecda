"""The package's shape: folders by concept, an import graph without cycles and at most 7 layers deep
(a module stands one layer above everything it imports), no module over 400 lines, the public API."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mmdlib"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the mmdlib modules it imports (anywhere in its body); package __init__ files left
    out (they only re-export), so `from mmdlib.pkg import mod` counts as an import of mmdlib.pkg.mod."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = {m for m, p in files.items() if p.name != "__init__.py"}
    graph = {}
    for name in modules:
        path, deps = files[name], set()
        package = name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """1 for a module that imports no mmdlib module, else 1 + the highest layer it imports; raises on a cycle."""
    out, visiting = {}, set()

    def visit(m: str) -> int:
        if m in out:
            return out[m]
        assert m not in visiting, f"import cycle through {m}"
        visiting.add(m)
        out[m] = 1 + max((visit(d) for d in graph[m]), default=0)
        visiting.discard(m)
        return out[m]

    for m in graph:
        visit(m)
    return out


def test_import_graph_is_shallow_and_acyclic():
    depth = layers(import_graph())
    deepest = max(depth.values())
    assert deepest <= 7, sorted(depth.items(), key=lambda kv: -kv[1])[:5]


def test_layers_of_a_constructed_graph():
    assert layers({"a": set(), "b": {"a"}, "c": {"a", "b"}}) == {"a": 1, "b": 2, "c": 3}
    try:
        layers({"a": {"b"}, "b": {"a"}})
    except AssertionError as e:
        assert "cycle" in str(e)
    else:
        raise AssertionError("a cycle was not found")


def test_folders_by_concept_and_small_modules():
    packages = [p.parent.name for p in PACKAGE.glob("*/__init__.py")]
    assert len(packages) >= 6, packages
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_public_api():
    """The names the README shows are importable from the top and are the package's own objects."""
    import mmdlib
    from mmdlib import Codec, MMDConfig, TokenLM, make_dataset, mmd_independence
    from mmdlib.codec.model import Codec as codec_class
    from mmdlib.mmd.loss import mmd_independence as loss

    assert Codec is codec_class and mmd_independence is loss
    assert {"Codec", "TokenLM", "MMDConfig", "mmd_independence", "make_dataset"} <= set(mmdlib.__all__)
    assert callable(make_dataset) and TokenLM.__module__ == "mmdlib.lm.model" and MMDConfig().estimator
