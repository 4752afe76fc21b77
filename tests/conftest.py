"""Shared fixtures: the embedded real data, prepared once per run (idempotent, cached on disk)."""

import pytest


@pytest.fixture(scope="session")
def prepared_data():
    """The prepared-data directory (``common.data.dataset_dir()``), filled on first use."""
    from common.data.prepare import prepare_all

    return prepare_all()
