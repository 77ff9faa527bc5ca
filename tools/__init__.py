"""The developer's tools of a clone of the repository (not installed with minicap): ``tools/dev.py`` (the
README's commands), the benchmarks (:mod:`tools.bench`), and the photos path rehearsed at full size
(:mod:`tools.rehearse_photos`)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # every tool quiet: set before any of them imports Keras
