"""Fixtures shared by the tests/test_nmt_*.py modules (imported there by name)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run each NMT test with one intra-op thread: the models in these tests are tiny, and two
    spinning threads on a busy 2-core machine make them hundreds of times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
