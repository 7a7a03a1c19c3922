import sys

import pytest

from trsplat.process_tuning import tune_malloc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tune_malloc_applies_on_glibc():
    assert tune_malloc() is True


def test_tune_malloc_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("TRSPLAT_MALLOC_TUNING", "0")
    assert tune_malloc() is False


def test_tune_process_sets_passive_openmp_wait_unless_set(monkeypatch):
    import os

    from trsplat.process_tuning import tune_process

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    tune_process()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    tune_process()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
