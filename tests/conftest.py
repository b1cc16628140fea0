import pytest
import torch

import ponder

DEVICES = ["cpu"] + (["cuda"] if ponder.cuda_available() and torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
