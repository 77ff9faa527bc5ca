"""minicap's tests: one module per package module, the notebooks' execution, the browser checks (``browser/``), and
the helpers they share (``support/``). Run from the repository's root (``python3 tools/dev.py test``)."""
