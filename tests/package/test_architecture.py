"""The package's import layers (docs/ARCHITECTURE.md), checked by parsing every module: a lower layer
never imports a higher one (lazy imports inside functions included), module-level imports form no
cycle (``if TYPE_CHECKING:`` imports counted: a cycle of annotations is a cycle of the design), no
module imports another package's underscore names, nothing below the CLI prints, parses arguments
or exits, and no product module uses a deprecated alias."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# lowest first; a module may import its own layer and the layers below (docs/ARCHITECTURE.md)
LAYERS = [
    ("kernels", ["fastlpips.kernels", "fastlpips._C"]),
    ("core", ["fastlpips.reference", "fastlpips.transforms", "fastlpips.validation", "fastlpips.precision",
              "fastlpips.nets", "fastlpips.utils", "fastlpips.bapps", "fastlpips.distributed",
              "fastlpips.classic", "fastlpips.imagefolder", "fastlpips.iqa", "fastlpips.ifc", "fastlpips.runs"]),
    ("ops", ["fastlpips.ops", "fastlpips._backend"]),
    ("metrics", ["fastlpips.model", "fastlpips.elpips", "fastlpips.estimator", "fastlpips.functional",
                 "fastlpips.losses", "fastlpips.metrics", "fastlpips.torchmetrics",
                 "fastlpips.dists"]),
    ("attacks/trainers/tools", ["fastlpips.attacks", "fastlpips.selfcheck", "fastlpips.scoring",
                                "fastlpips.training", "fastlpips.pat", "fastlpips.robust",
                                "fastlpips.geometry", "fastlpips.evaluation"]),
    ("cli", ["fastlpips.cli", "fastlpips.__main__"]),
]
CLI = ("fastlpips.cli", "fastlpips.__main__")
DEPRECATED = {"fastlpips_cpp": "fastlpips.ops.native"}  # deprecated alias -> the one module defining it
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


def _is_type_checking(test) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name):
    """(imported module, imported names, line, at module level) for every import of ``name``;
    imports under a module-level ``if TYPE_CHECKING:`` count as module level."""
    tree = ast.parse(MODULES[name].read_text())
    top = set(map(id, tree.body))
    for node in tree.body:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            top |= {id(n) for n in node.body}
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


def _cli_habits(name):
    """(what, line) for each print, argument parser or exit in module ``name``."""
    out = []
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            parsers = ("argparse", "optparse", "getopt")
            out += [(f"imports {m}", node.lineno) for m in mods if m.split(".")[0] in parsers]
        elif isinstance(node, ast.Call):
            f = node.func
            called = f.id if isinstance(f, ast.Name) else (
                f"{f.value.id}.{f.attr}" if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else "")
            if called in ("print", "exit", "quit", "sys.exit", "os._exit", "os.abort"):
                out.append((f"calls {called}()", node.lineno))
    return out


def _deprecated_uses(name):
    """(alias, line) for each use of a deprecated alias outside the module that defines it."""
    out = []
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        for alias, home in DEPRECATED.items():
            if name == home:
                continue
            if isinstance(node, ast.Attribute) and node.attr == alias:
                out.append((alias, node.lineno))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    alias in node.value.split("::")[0:1]:
                out.append((alias, node.lineno))
    return out


def test_nothing_below_the_cli_prints_parses_arguments_or_exits():
    bad = [f"{name}:{line} {what}" for name in MODULES if not name.startswith(CLI)
           for what, line in _cli_habits(name)]
    assert not bad, "the library knows no CLI (docs/ARCHITECTURE.md):\n" + "\n".join(bad)


def test_no_product_module_uses_a_deprecated_alias():
    bad = [f"{name}:{line} uses {alias}" for name in MODULES for alias, line in _deprecated_uses(name)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("rule", ["lower", "cycle", "type-checking-cycle", "underscore", "cli", "deprecated"])
def test_the_checks_can_fail(rule, monkeypatch, tmp_path):
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
    if rule == "type-checking-cycle":  # the evaluation report importing the run for annotations only
        source = MODULES["fastlpips.evaluation.specs"].read_text()
        planted_file = tmp_path / "specs.py"  # read in place of the module (the package is left untouched)
        monkeypatch.setitem(MODULES, "fastlpips.evaluation.specs", planted_file)
        planted_file.write_text(source + "\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                "    from .run import evaluate\n")
        with pytest.raises(AssertionError, match="import cycles"):
            test_no_import_cycles_at_module_level()
        return
    if rule in ("cli", "deprecated"):
        target = "fastlpips.iqa"
        text = MODULES[target].read_text() + ("\nprint('hello')\n" if rule == "cli" else
                                               "\nimport torch\nX = torch.ops.fastlpips_cpp\n")
        planted_file = tmp_path / "iqa.py"
        planted_file.write_text(text)
        monkeypatch.setitem(MODULES, target, planted_file)
        with pytest.raises(AssertionError):
            (test_nothing_below_the_cli_prints_parses_arguments_or_exits if rule == "cli"
             else test_no_product_module_uses_a_deprecated_alias)()
        return
    check = {"lower": test_lower_layers_never_import_higher_ones, "cycle": test_no_import_cycles_at_module_level,
             "underscore": test_no_underscore_names_across_packages}[rule]
    with pytest.raises(AssertionError):
        check()
