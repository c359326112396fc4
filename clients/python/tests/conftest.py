import pytest


@pytest.fixture
def devices():
    """SdkDevices to shut down after the test."""
    made = []
    yield made
    for d in made:
        d.shutdown()
