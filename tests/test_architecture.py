"""The package's import layers (docs/ARCHITECTURE.md), checked by parsing every module's imports:
a lower layer never imports a higher one (lazy imports inside functions included), module-level
imports form no cycle, and no module imports another package's underscore names."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# lowest first; a module may import its own layer and the layers below (docs/ARCHITECTURE.md)
LAYERS = [
    ("kernels", ["fastlpips.kernels", "fastlpips._C"]),
    ("core", ["fastlpips.reference", "fastlpips.transforms", "fastlpips.validation", "fastlpips.precision",
              "fastlpips.nets", "fastlpips.utils", "fastlpips.bapps", "fastlpips.distributed",
              "fastlpips.classic", "fastlpips.imagefolder", "fastlpips.iqa", "fastlpips.runs"]),
    ("ops", ["fastlpips.ops", "fastlpips._backend"]),
    ("metrics", ["fastlpips.model", "fastlpips.elpips", "fastlpips.estimator", "fastlpips.functional",
                 "fastlpips.losses"]),
    ("attacks/trainers/tools", ["fastlpips.attacks", "fastlpips.selfcheck", "fastlpips.scoring",
                                "fastlpips.training", "fastlpips.pat", "fastlpips.robust",
                                "fastlpips.geometry", "fastlpips.evaluation", "fastlpips.evaluation_report"]),
    ("cli", ["fastlpips.cli", "fastlpips.__main__"]),
]
EXEMPT_UNDERSCORE = {"fastlpips._C"}  # the compiled extension (torch's naming), the kernels layer


def _modules():
    mods = {}
    for path in sorted((ROOT / "fastlpips").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        mods[name] = path
    for path in sorted((ROOT / "kernels").rglob("*.py")):
        rel = path.relative_to(ROOT / "kernels").with_suffix("")
        parts = ("fastlpips", "kernels") + (rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _layer(name):
    for k, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return k
    return None


def _package(name):
    path = MODULES.get(name)
    is_pkg = path is not None and path.name == "__init__.py"
    return name if is_pkg else name.rsplit(".", 1)[0]


def _imports(name):
    """(imported module, imported names, line, at module level) for every import of ``name``."""
    tree = ast.parse(MODULES[name].read_text())
    top = set(map(id, tree.body))
    pkg = _package(name)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("fastlpips"):
                    out.append((a.name, [], node.lineno, id(node) in top))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("fastlpips"):
                continue
            names = [a.name for a in node.names]
            subs = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in MODULES or f"{mod}.{n}" in EXEMPT_UNDERSCORE]
            if subs:  # `from pkg import module`
                out += [(s, [], node.lineno, id(node) in top) for s in subs]
                rest = [n for n in names if f"{mod}.{n}" not in subs]
                if rest:
                    out.append((mod, rest, node.lineno, id(node) in top))
            else:
                out.append((mod, names, node.lineno, id(node) in top))
    return out


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if m != "fastlpips" and _layer(m) is None]
    assert not missing, f"modules without a layer in docs/ARCHITECTURE.md / LAYERS: {missing}"


def test_lower_layers_never_import_higher_ones():
    bad = []
    for name in MODULES:
        if name == "fastlpips":
            continue  # the package root re-exports the public API of every layer
        me = _layer(name)
        for mod, _, line, _ in _imports(name):
            other = _layer(mod)
            if other is not None and other > me:
                bad.append(f"{name}:{line} ({LAYERS[me][0]}) imports {mod} ({LAYERS[other][0]})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_at_module_level():
    graph = {m: {mod for mod, _, _, top in _imports(m) if top and mod in MODULES and mod != m} for m in MODULES}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if n == "fastlpips" or (m.startswith(n + ".")):  # a package's own __init__ runs first
                continue
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_underscore_names_across_packages():
    bad = []
    for name in MODULES:
        mine = _package(name)
        for mod, names, line, _ in _imports(name):
            if mod in EXEMPT_UNDERSCORE:
                continue
            theirs = _package(mod) if mod in MODULES else mod
            if theirs == mine:
                continue
            private = [n for n in names if n.startswith("_")]
            if any(p.startswith("_") and p != "__main__" for p in mod.split(".")[1:]) and _package(mod) != mine:
                private.append(mod)
            if private:
                bad.append(f"{name}:{line} imports {private} from {mod}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("rule", ["lower", "cycle", "underscore"])
def test_the_checks_can_fail(rule, monkeypatch):
    """The checks above catch a planted violation (a check that cannot fail proves nothing)."""
    real = _imports

    def planted(name):
        extra = []
        if rule == "lower" and name == "fastlpips.reference":
            extra = [("fastlpips.model", ["LPIPS"], 1, False)]
        if rule == "cycle" and name == "fastlpips.transforms":
            extra = [("fastlpips.ops.torch_kernels", [], 1, True)]
        if rule == "underscore" and name == "fastlpips.attacks.distances":
            extra = [("fastlpips.elpips", ["_Dropout"], 1, False)]
        return real(name) + extra

    monkeypatch.setitem(globals(), "_imports", planted)
    check = {"lower": test_lower_layers_never_import_higher_ones, "cycle": test_no_import_cycles_at_module_level,
             "underscore": test_no_underscore_names_across_packages}[rule]
    with pytest.raises(AssertionError):
        check()
