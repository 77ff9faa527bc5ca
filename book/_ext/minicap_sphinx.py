"""The rendered book's own additions: its stylesheet, and a build fix.

- ``static/minicap.css``: code cells at a size whose longest line fits the article's column at 1280 px.
- Under Sphinx 7.4, inline configuration scripts that extensions add once the builder exists (e.g.
  sphinx-thebe's ``const THEBE_JS_URL = ...``) reach the page twice, and a repeated ``const`` is a
  SyntaxError in the reader's browser (tests/browser checks pages for console errors): the repeats are dropped.
- The API reference (book/api.md) shows a Keras layer's constructor arguments: autodoc reads a class's signature
  from ``__new__`` before ``__init__``, and Keras's ``Layer.__new__(cls, *args, **kwargs)`` would show every layer
  as ``Patches(*args, **kwargs)``.
"""
import inspect
from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"


def _drop_repeated_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        attributes = getattr(script, "attributes", {})
        key = (getattr(script, "filename", str(script)) or "", tuple(sorted(attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique  # Sphinx restores its own list after each page


def _constructor_signature(app, what, name, obj, options, signature, return_annotation):
    if what != "class" or not inspect.isclass(obj) or not (signature or "").startswith("(*args, **kwargs"):
        return None
    init = inspect.signature(obj.__init__)
    parameters = list(init.parameters.values())[1:]  # without self
    return str(init.replace(parameters=parameters, return_annotation=inspect.Signature.empty)), return_annotation


def _add_static(app, config):
    config.html_static_path.append(str(STATIC))


def setup(app):
    app.connect("config-inited", _add_static)
    app.add_css_file("minicap.css")
    app.connect("html-page-context", _drop_repeated_scripts)
    app.connect("autodoc-process-signature", _constructor_signature)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
