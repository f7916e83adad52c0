"""The package layering written in docs/ARCHITECTURE.md, checked against every import in medreason/.

The document's `layers` block says which packages each package may import; this test reads that block and every
import statement (module top and inside functions), so the layering cannot rot without this test failing.
"""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medreason"
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def declared_layers() -> dict[str, set[str]]:
    block = re.search(r"```layers\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert block, "docs/ARCHITECTURE.md has no ```layers block"
    layers = {}
    for line in block.group(1).splitlines():
        name, _, allowed = line.partition(":")
        layers[name.strip().rstrip("/")] = {a.strip().rstrip("/") for a in allowed.split() if a.strip()}
    return layers


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "medreason" and len(parts) > 1 else None


def imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported medreason module, inside a function) for every import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node, nested):
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                if child.module == "medreason":
                    found.extend((child.lineno, f"medreason.{a.name}", nested) for a in child.names)
                elif child.module.startswith("medreason."):
                    found.append((child.lineno, child.module, nested))
            elif isinstance(child, ast.ImportFrom) and child.level:
                found.append((child.lineno, "relative", nested))
            elif isinstance(child, ast.Import):
                found.extend((child.lineno, a.name, nested) for a in child.names if a.name.startswith("medreason."))
            visit(child, inner)
    visit(tree, False)
    return found


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_package_is_declared_and_the_declared_layers_have_no_cycle():
    layers = declared_layers()
    on_disk = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert on_disk == set(layers), "docs/ARCHITECTURE.md's layers block must list exactly the packages of medreason/"
    assert not [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"], "modules live in a package"
    done: set[str] = set()
    while len(done) < len(layers):  # peel off packages whose imports are all peeled: a cycle would stop this
        ready = {name for name, allowed in layers.items() if name not in done and allowed <= done}
        assert ready, f"the declared layers have a cycle among {sorted(set(layers) - done)}"
        done |= ready


def test_every_import_in_medreason_follows_the_declared_layers():
    layers = declared_layers()
    wrong = []
    for path in modules():
        own = path.relative_to(PACKAGE).parts[0]
        for line, module, _ in imports(path):
            if module == "relative":
                wrong.append(f"{path.relative_to(ROOT)}:{line} uses a relative import (write it absolute)")
                continue
            target = package_of(module)
            if target and target != own and target not in layers.get(own, set()):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}: {own}/ may import only "
                             f"{sorted(layers.get(own, set()))}")
    assert not wrong, "\n".join(wrong)


def test_the_architecture_document_names_only_modules_that_exist():
    named = set(re.findall(r"`(medreason/[\w/]+\.py)`", DOC.read_text(encoding="utf-8")))
    assert len(named) > 20  # the concept table is there
    missing = sorted(n for n in named if not (ROOT / n).is_file())
    assert not missing, f"docs/ARCHITECTURE.md names modules that do not exist: {missing}"


def test_each_package_docstring_says_what_it_may_import_as_the_document_does():
    for name, allowed in declared_layers().items():
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text(encoding="utf-8"))) or ""
        said = re.search(r"May import: (.*?)\.?$", doc, re.M)
        assert said, f"medreason/{name}/__init__.py's docstring does not say what it may import"
        words = set() if said.group(1).startswith("nothing") else {w.strip() for w in said.group(1).split(",")}
        assert words == allowed, f"medreason/{name}/__init__.py says {sorted(words)}, docs/ARCHITECTURE.md {sorted(allowed)}"


def test_no_module_of_medreason_imports_a_sibling_inside_a_function():
    """Imports at the top of each module show its dependencies; one hidden in a function hides them."""
    hidden = [f"{path.relative_to(ROOT)}:{line} {module}" for path in modules()
              for line, module, nested in imports(path) if nested]
    assert not hidden, "\n".join(hidden)
