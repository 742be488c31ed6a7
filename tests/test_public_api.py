"""The public API is a promise: one import name, ``keel.__all__`` documented with examples that
run, and a wheel that claims no other top-level name."""

from __future__ import annotations

import doctest
import inspect
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import keel
from keel.activities import _runtime
from keel.config import KeelSettings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def isolated_runtime(tmp_path):
    """In-process steps write blobs and open models: keep them in a temp data dir."""
    previous = _runtime._runtime
    _runtime._runtime = _runtime.Runtime(KeelSettings(data_dir=tmp_path, llm_start_local=False))
    yield
    _runtime._runtime.close()
    _runtime._runtime = previous


def test_keel_exposes_a_public_api():
    assert len(keel.__all__) > 20
    assert all(hasattr(keel, name) for name in keel.__all__)


@pytest.mark.parametrize("name", keel.__all__)
def test_every_public_name_has_a_docstring_whose_example_runs(name, isolated_runtime):
    obj = getattr(keel, name)
    docstring = inspect.getdoc(obj) or ""
    assert ">>>" in docstring, f"keel.{name} has no example in its docstring"
    module = inspect.getmodule(obj) if not inspect.ismodule(obj) else obj
    finder = doctest.DocTestFinder(recurse=False)
    tests = finder.find(obj, f"keel.{name}", module=module, globs=vars(module).copy())
    assert tests and any(t.examples for t in tests)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"keel.{name}: {runner.failures} example(s) failed (see the output above)"


def test_the_wheel_holds_only_the_keel_package(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    [wheel] = tmp_path.glob("keel-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names}
    assert top_level == {"keel", f"keel-{keel_version()}.dist-info"}, top_level
    for module in ("keel/worker.py", "keel/workflows/answer.py", "keel/activities/llm.py",
                   "keel/retrieval/edge.py", "keel/ingestion/pii.py", "keel/testing/fake_openai.py"):
        assert module in names
    worker = zipfile.ZipFile(wheel).read("keel/worker.py").decode()
    assert "def main(" in worker  # the stock worker itself, not a link
    entry_points = zipfile.ZipFile(wheel).read(f"keel-{keel_version()}.dist-info/entry_points.txt").decode()
    assert "keel = keel.cli:main" in entry_points


def keel_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("keel")
