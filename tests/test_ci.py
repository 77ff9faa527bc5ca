"""``.ci/run``, what CI runs: the README's Quickstart commands, under ``CI`` (so that a missing test prerequisite fails).

It runs here on a stand-in checkout: the real script, a README whose Quickstart commands record what they see, and a
``tools/dev.py`` whose browser tasks do nothing.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

# Independent of Keras's backend: runs once, on the default one.
pytestmark = pytest.mark.single_backend

ROOT = Path(__file__).resolve().parent.parent
FENCE = "`" * 3

README = f"""# stand-in

## Quickstart

{FENCE}bash
echo "CI=${{CI:-unset}}" >> seen.txt   # the first command
mkdir -p _build/html && touch _build/html/index.html && echo built >> seen.txt
{FENCE}

## Later

{FENCE}bash
echo "not a Quickstart command" >> seen.txt
{FENCE}
"""


def test_ci_runs_the_quickstart_commands_with_ci_set(tmp_path):
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    (tmp_path / "README.md").write_text(README)
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "dev.py").write_text("")  # browser-deps and browser: nothing to do
    environment = {key: value for key, value in os.environ.items() if key != "CI"}
    done = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "seen.txt").read_text().splitlines() == ["CI=1", "built"]
