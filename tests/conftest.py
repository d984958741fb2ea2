import os
from pathlib import Path

import numpy as np
import pytest

# The verified copies of the real datasets sit beside the checkout (see ../shared/data/README.md).
SHARED_DATA = Path(os.environ.get("CNNKIT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA}")
    return SHARED_DATA
