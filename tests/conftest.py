import importlib.util
import os

import pytest
import torch

# Two cores on CI: keep intra-op threads modest so parallel pytest workers do not oversubscribe.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# ONNX export and int8 need the whole export extra: onnx + onnxscript to export, onnxruntime to run and quantise.
HAS_ONNX = all(importlib.util.find_spec(p) for p in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="onnx, onnxscript and onnxruntime not installed "
                                "(pip install -e '.[export]')")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
