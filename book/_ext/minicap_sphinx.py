"""Build fix for the rendered book: drop repeated inline scripts from every page.

Under Sphinx 7.4, inline configuration scripts that extensions add once the builder exists (e.g.
sphinx-thebe's ``const THEBE_JS_URL = ...``) reach the page twice, and a repeated ``const`` is a
SyntaxError in the reader's browser (tests/browser checks pages for console errors).
"""


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


def setup(app):
    app.connect("html-page-context", _drop_repeated_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
