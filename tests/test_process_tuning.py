import json
import os
import subprocess
import sys

import pytest

from trsplat.process_tuning import ENVIRONMENT, tune_malloc, tune_process


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tune_malloc_applies_on_glibc():
    assert tune_malloc() is True


def test_tune_malloc_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("TRSPLAT_MALLOC_TUNING", "0")
    assert tune_malloc() is False


@pytest.mark.parametrize("name", sorted(ENVIRONMENT))
def test_tune_process_sets_the_environment_unless_set(monkeypatch, name):
    monkeypatch.delenv(name, raising=False)
    tune_process()
    assert os.environ[name] == ENVIRONMENT[name]
    monkeypatch.setenv(name, "user value")
    tune_process()
    assert os.environ[name] == "user value"


# Records the environment at the moment torch is imported, then runs the command as `python -m trsplat`.
_PROBE = """
import importlib.abc, json, os, runpy, sys
names = sys.argv[1].split(",")
class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "seen" not in os.environ:
            os.environ["seen"] = json.dumps({k: os.environ.get(k) for k in names})
        return None
sys.meta_path.insert(0, Probe())
sys.argv = ["trsplat", "--help"]
try:
    runpy.run_module("trsplat", run_name="__main__")
except SystemExit:
    pass
print("SEEN" + os.environ["seen"])
"""


def test_the_command_tunes_the_environment_before_torch_is_imported():
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT}
    proc = subprocess.run([sys.executable, "-c", _PROBE, ",".join(ENVIRONMENT)], env=env,
                          capture_output=True, text=True, timeout=300)
    seen = [line for line in proc.stdout.splitlines() if line.startswith("SEEN")]
    assert seen, proc.stdout + proc.stderr
    assert json.loads(seen[0][4:]) == ENVIRONMENT
