import sys

import pytest

from trsplat.malloc_tuning import tune_malloc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tune_malloc_applies_on_glibc():
    assert tune_malloc() is True


def test_tune_malloc_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("TRSPLAT_MALLOC_TUNING", "0")
    assert tune_malloc() is False
