from pathlib import Path

import pytest

SAMPLES = Path(__file__).parent / "samples"


@pytest.fixture
def sample():
    """Read a captured (or documented) scheduler output by its path under samples/."""

    def read(relative: str) -> str:
        return (SAMPLES / relative).read_text()

    return read
