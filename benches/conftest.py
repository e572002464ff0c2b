"""Shared benchmark setup: datasets are built once, with fixed seeds, in each bench module."""

from __future__ import annotations

import gc

import pytest


@pytest.fixture(autouse=True)
def _quiet_gc() -> None:
    # Keep long-lived datasets out of the collector's way, as every peer gets the same treatment.
    gc.collect()
    gc.freeze()
