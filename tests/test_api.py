"""The public API, as a student reusing minicap sees it: the book's reference page (``book/api.md``) shows every
module's ``__all__``, every public name has a docstring of its own, the docstrings of what takes tensors give their
shapes, and the docstrings' examples run (on every backend the suite runs, TensorFlow and JAX included).

The version a student pins agrees everywhere: ``pyproject.toml``, ``minicap.__version__``, the changelog's latest
entry and the README's install line. The README's examples of using the layers alone run as written.
"""
import doctest
import importlib
import inspect
import json
import re
import sys
import textwrap
import tomllib
from pathlib import Path

import keras
import numpy as np
import pytest

import minicap
from tests.support import require

ROOT = Path(__file__).resolve().parents[1]
API_PAGE = ROOT / "book" / "api.md"
README = ROOT / "README.md"

# The modules the reference must cover: the layers of every chapter, the model, decoding, metrics, training and the
# data loaders (a student's coursework reuses these); the page may document more.
REQUIRED_MODULES = {
    "minicap.patches", "minicap.positional", "minicap.attention", "minicap.encoder", "minicap.decoder", "minicap.vit",
    "minicap.model", "minicap.generate", "minicap.metrics", "minicap.training", "minicap.train",
    "minicap.data.datasets", "minicap.data.shapes", "minicap.data.flickr8k", "minicap.data.coco",
    "minicap.data.folder", "minicap.data.images", "minicap.data.pipeline",
}
# Parameters that take tensors or arrays: a docstring of a function or method taking one gives their shapes.
TENSOR_ARGUMENTS = {"images", "tokens", "query", "key", "inputs", "mask", "masks", "table", "attention",
                    "y_true", "y_pred", "logits", "features", "patches", "positions"}
# A shape in a docstring: a tuple in double backquotes (``(batch, length)``, ``(H, W, 3)``) or a "(batch" in words.
SHAPE = re.compile(r"``\([^`]*,[^`]*\)``|\(batch\b")
KERAS_BASES = (keras.layers.Layer, keras.losses.Loss, keras.metrics.Metric)


def documented_modules(page=API_PAGE):
    """The modules the reference page documents, in its order (its ``automodule`` directives)."""
    return re.findall(r"^\.\. automodule:: (\S+)\s*$", page.read_text(encoding="utf-8"), flags=re.M)


def attribute_docs(module):
    """The names of ``module`` with a ``#:`` doc comment (or a docstring after them), as Sphinx's autodoc reads
    them for the reference."""
    analyzer = require("sphinx.pycode", "Sphinx (the book extra) reads the constants' doc comments").ModuleAnalyzer
    return {name for (scope, name) in analyzer.for_module(module.__name__).find_attr_docs() if scope == ""}


def _own_public_methods(cls):
    """``cls``'s public methods and properties that are its own, not overrides of a Keras (or object) method,
    whose docstrings the Keras base documents (``call``, ``build``, ``get_config``, ...)."""
    inherited = {name for base in cls.__mro__[1:] if not base.__module__.startswith("minicap") for name in vars(base)}
    for name, value in vars(cls).items():
        if name.startswith("_") or name in inherited:
            continue
        function = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
        function = function.fget if isinstance(function, property) else function
        if inspect.isfunction(function):
            yield name, function


def undocumented(module):
    """The public names of ``module`` (and their own public methods) without a docstring, or not defined in it."""
    problems = []
    names = getattr(module, "__all__", None)
    if names is None:
        return [f"{module.__name__} has no __all__"]
    if len(set(names)) != len(names):
        problems.append(f"{module.__name__}.__all__ lists a name twice")
    attributes = None
    for name in names:
        if not hasattr(module, name):
            problems.append(f"{module.__name__}.__all__ lists {name!r}, which the module does not define")
            continue
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            if value.__module__ != module.__name__:
                problems.append(f"{module.__name__}.{name} is imported from {value.__module__} (list it there)")
            if not (value.__doc__ or "").strip():
                problems.append(f"{module.__name__}.{name} has no docstring")
            if inspect.isclass(value):
                problems += [f"{module.__name__}.{name}.{method} has no docstring"
                             for method, function in _own_public_methods(value) if not (function.__doc__ or "").strip()]
        else:
            attributes = attribute_docs(module) if attributes is None else attributes
            if name not in attributes:
                problems.append(f"{module.__name__}.{name} has no #: doc comment")
    return problems


def _tensor_arguments(function):
    try:
        return TENSOR_ARGUMENTS & set(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return set()


def _class_docs(cls):
    """A class's docstring and its ``call``'s (a layer may give its shapes in either)."""
    return (cls.__doc__ or "") + (getattr(getattr(cls, "call", None), "__doc__", None) or "")


def without_shapes(module):
    """The public layers, losses, metrics, functions and methods of ``module`` that take tensors but whose
    docstrings give no shape."""
    problems = []
    for name in getattr(module, "__all__", ()):
        value = getattr(module, name, None)
        if inspect.isclass(value):
            if issubclass(value, KERAS_BASES) and not SHAPE.search(_class_docs(value)):
                problems.append(f"{module.__name__}.{name}: a Keras {value.__mro__[1].__name__} without shapes")
            for method, function in _own_public_methods(value):
                if _tensor_arguments(function) and not SHAPE.search(function.__doc__ or ""):
                    problems.append(f"{module.__name__}.{name}.{method} takes {sorted(_tensor_arguments(function))} "
                                    "without shapes")
        elif inspect.isfunction(value) and _tensor_arguments(value) and not SHAPE.search(value.__doc__ or ""):
            problems.append(f"{module.__name__}.{name} takes {sorted(_tensor_arguments(value))} without shapes")
    return problems


API_MODULES = documented_modules()


def test_the_reference_covers_the_public_modules():
    assert REQUIRED_MODULES <= set(API_MODULES), f"not in book/api.md: {sorted(REQUIRED_MODULES - set(API_MODULES))}"
    assert len(set(API_MODULES)) == len(API_MODULES), "book/api.md documents a module twice"
    for name in API_MODULES:
        assert hasattr(importlib.import_module(name), "__all__"), f"{name} has no __all__ to say what is public"
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    assert "file: book/api" in toc and toc.index("file: book/api") > toc.index("file: book/appendix"), toc


@pytest.mark.single_backend
@pytest.mark.parametrize("module_name", API_MODULES)
def test_every_public_name_has_a_docstring(module_name):
    assert undocumented(importlib.import_module(module_name)) == []


@pytest.mark.single_backend
@pytest.mark.parametrize("module_name", API_MODULES)
def test_what_takes_tensors_gives_their_shapes(module_name):
    assert without_shapes(importlib.import_module(module_name)) == []


def test_the_checks_catch_an_undocumented_name(tmp_path, monkeypatch):
    """The two checks above fail on a module with a public name lacking a docstring, a constant lacking its doc
    comment, a layer and a function without shapes, a name imported from elsewhere and a name it does not have."""
    (tmp_path / "student_module.py").write_text(textwrap.dedent('''\
        import keras
        from minicap.attention import causal_mask

        __all__ = ["Documented", "Bare", "blend", "LIMIT", "SIZES", "causal_mask", "missing"]

        #: documented
        LIMIT = 3
        SIZES = (1, 2)

        class Documented(keras.layers.Layer):
            """A layer: ``(batch, length, width)`` in and out."""

            def scaled(self, factor):
                return factor

        class Bare(keras.layers.Layer):
            """A layer whose docstring names no shape."""

        def blend(query, key):
            """Mixes two tensors."""
        '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("student_module")
    try:
        problems = "\n".join(undocumented(module) + without_shapes(module))
    finally:
        sys.modules.pop("student_module", None)
    for expected in ["student_module.Documented.scaled has no docstring", "student_module.SIZES has no #: doc",
                     "student_module.causal_mask is imported from minicap.attention",
                     "lists 'missing', which the module does not define", "student_module.Bare: a Keras Layer without",
                     "student_module.blend takes ['key', 'query'] without shapes"]:
        assert expected in problems
    assert "LIMIT" not in problems and "Documented:" not in problems


def _examples(module_name):
    finder = doctest.DocTestFinder(exclude_empty=True)
    module = importlib.import_module(module_name)
    return [test for test in finder.find(module, module_name, extraglobs={"np": np, "keras": keras}) if test.examples]


def test_the_layers_and_tensor_functions_have_examples():
    """Every public layer, and every public function taking tensors, shows an example (which the next test runs)."""
    missing = []
    for module_name in API_MODULES:
        module = importlib.import_module(module_name)
        with_examples = {test.name.rsplit(".", 1)[-1] for test in _examples(module_name)}
        for name in module.__all__:
            value = getattr(module, name)
            needs = (inspect.isclass(value) and issubclass(value, KERAS_BASES)) or (
                inspect.isfunction(value) and _tensor_arguments(value))
            if needs and name not in with_examples:
                missing.append(f"{module_name}.{name}")
    assert missing == []


MAX_EXAMPLE_LINE = 84  # characters with the prompt: what fits the reference's column at 1280 px (tests/browser)


@pytest.mark.single_backend
def test_the_examples_fit_the_page():
    too_long = [f"{test.name}: {line}" for module_name in API_MODULES for test in _examples(module_name)
                for example in test.examples
                for line in [f">>> {text}" for text in example.source.splitlines()] + example.want.splitlines()
                if len(line) > MAX_EXAMPLE_LINE]
    assert too_long == [], f"example lines over {MAX_EXAMPLE_LINE} characters (with the prompt)"


@pytest.mark.parametrize("module_name", API_MODULES)
def test_the_docstring_examples_run(module_name, tmp_path, monkeypatch):
    """Each module's docstring examples, run by doctest with ``np`` and ``keras`` imported, as the reference shows
    them, on this run's backend (the suite runs it on TensorFlow, JAX and PyTorch)."""
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in _examples(module_name):
        keras.utils.set_random_seed(0)
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples of {module_name} failed (above)"


def _version_of_pyproject():
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]["version"]


def test_the_version_agrees_everywhere():
    version = _version_of_pyproject()
    assert minicap.__version__ == version
    changelog = (ROOT / "book" / "changelog.md").read_text(encoding="utf-8")
    assert re.findall(r"^## (\d+\.\d+\.\d+)", changelog, flags=re.M)[0] == version, "the changelog's latest entry"
    pins = re.findall(r"github\.com/minicap-book/minicap@(v[\d.]+)", README.read_text(encoding="utf-8")
                      + API_PAGE.read_text(encoding="utf-8") + changelog)
    assert pins and set(pins) == {f"v{version}"}, pins


def _readme_section(title):
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def test_the_readme_says_how_to_use_minicap_in_a_project():
    section = _readme_section("Using minicap in your own project")
    for needed in ["git+https://github.com/minicap-book/minicap@", "TensorFlow", "JAX", "PyTorch", "tools/",
                   "__all__", "book/api.md", "book/changelog.md"]:
        assert needed in section, needed


@pytest.mark.single_backend
def test_the_readme_examples_run_as_written(tmp_path, monkeypatch):
    section = _readme_section("Using minicap in your own project")
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 2, "the section shows the layers and a batch of data"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})


ROLE = re.compile(r"\{py:(class|func|meth|mod|data)\}`(?:[^`<]*<)?~?([\w.]+)>?`")  # {py:func}`~a.b`, `title <a.b>`


def _book_pages():
    return sorted((ROOT / "book").glob("*.ipynb")) + sorted((ROOT / "book").glob("*.md"))


def _public(target):
    """Whether ``target`` (``minicap.module`` or ``minicap.module.name``) is a module of the reference or a name in
    its module's ``__all__``."""
    if target in API_MODULES:
        return True
    module, _, name = target.rpartition(".")
    if module in API_MODULES:
        return name in importlib.import_module(module).__all__
    owner, _, method = module.rpartition(".")  # minicap.module.Class.method
    return owner in API_MODULES and method in importlib.import_module(owner).__all__ and hasattr(
        getattr(importlib.import_module(owner), method), name)


@pytest.mark.single_backend
def test_the_chapters_link_their_names_to_the_reference():
    """Each chapter's summary names what it built in minicap as links into the reference (Sphinx's ``{py:...}``
    roles), and every such link in the book points at a public name, which the reference documents."""
    for path in _book_pages():
        text = path.read_text(encoding="utf-8")
        dangling = [target for _, target in ROLE.findall(text) if not _public(target)]
        assert dangling == [], f"{path.name} links to names the reference does not show: {dangling}"
        if path.name[:2] in {"01", "02", "03", "04", "05", "06"}:
            summary = next(cell for cell in json.loads(text)["cells"]
                           if cell["cell_type"] == "markdown" and "## Summary" in "".join(cell["source"]))
            assert len(ROLE.findall("".join(summary["source"]))) >= 3, f"{path.name}'s summary links no minicap names"
