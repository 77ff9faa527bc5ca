"""The package's layout as the README draws it: every module listed, each importing only modules listed before it
(the settings first, importing no other), and no module reaching outside the package for code (``sys.path``)."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "minicap"

pytestmark = pytest.mark.single_backend


def readme_order():
    """The package's modules in the order of the README's layout (``config``, ``positional``, ...,
    ``data.images``, ...): an entry is a line ``  name.py`` (or ``  data/`` with its files, which may run on over
    the next, more indented lines)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text[text.index("minicap/     the package"):]
    block = block[:block.index("```")]
    entries = []
    for line in block.splitlines()[1:]:
        if re.match(r"  \S", line):
            entries.append(line)
        elif entries:
            entries[-1] += " " + line  # an entry's description continued
    order = []
    for entry in entries:
        name = entry.split()[0]
        if name == "data/":
            order += [f"data.{module}" for module in re.findall(r"(\w+)\.py", entry)]
        elif name.endswith(".py"):
            order.append(name[:-3])
    return order


def imported_modules(path):
    """The minicap modules that the file at ``path`` imports, anywhere in it (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("minicap"):
            base = node.module.removeprefix("minicap").lstrip(".")
            names = [base] if base else [alias.name for alias in node.names]
            found.update(name for name in names if name)
        elif isinstance(node, ast.Import):
            found.update(alias.name.removeprefix("minicap.") for alias in node.names
                         if alias.name.startswith("minicap."))
    return found


def modules():
    return sorted(p.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".")
                  for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def test_the_readme_lists_every_module_of_the_package():
    assert sorted(readme_order()) == modules()


def test_no_module_imports_one_listed_after_it():
    order = readme_order()
    position = {name: index for index, name in enumerate(order)}
    upward = []
    for name in order:
        for imported in imported_modules(PACKAGE / (name.replace(".", "/") + ".py")):
            if imported in position and position[imported] >= position[name]:
                upward.append(f"{name} imports {imported}")
    assert not upward, f"imports of modules listed after the importer in the README's layout: {upward}"
    assert order[0] == "config" and not imported_modules(PACKAGE / "config.py")  # the settings: a leaf


def test_the_settings_module_needs_neither_keras_nor_any_layer():
    source = (PACKAGE / "config.py").read_text(encoding="utf-8")
    assert not re.search(r"^\s*(import|from)\s+(keras|tensorflow|jax|numpy)", source, flags=re.MULTILINE)


def test_the_package_never_reaches_outside_itself_for_code():
    offenders = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if "sys.path" in p.read_text()]
    assert not offenders
