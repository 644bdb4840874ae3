"""`import core_attn` stays torch-only: no plotting, training or config frameworks at import time."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_core_attn_is_torch_only():
    code = ("import core_attn, core_attn.layers, core_attn.viz, sys; "
            "heavy = [m for m in ('matplotlib', 'lightning', 'hydra', 'omegaconf') if m in sys.modules]; "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
