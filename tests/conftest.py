import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    # Tests are small: one thread each keeps them predictable on the 2-core CI machine.
    torch.set_num_threads(1)
    # a failure inside the Monitor's own measurements raises here (a user's run only warns)
    os.environ["STEADYGRAD_STRICT"] = "1"
