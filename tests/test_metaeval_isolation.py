"""evalkit never imports metaeval (metaeval builds on evalkit, not the other way round)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_importing_and_using_evalkit_never_imports_metaeval():
    code = textwrap.dedent("""
        import sys

        import torch
        from torch import nn

        import evalkit as ek

        assert "metaeval" not in sys.modules, "import evalkit imported metaeval"
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(),
                              nn.Linear(2 * 6 * 6, 3)).eval()
        x = torch.rand(4, 1, 6, 6)
        y = model(x).argmax(1)
        s = torch.zeros(4, 1, 6, 6, dtype=torch.bool)
        s[:, :, 1:4, 1:4] = True
        res = ek.evaluate({"Sparseness": ek.metrics.Sparseness(),
                           "PointingGame": ek.metrics.PointingGame(),
                           "MaxSensitivity": ek.metrics.MaxSensitivity(nr_samples=2)},
                          {"Saliency": {}, "GradientShap": {}}, model, x, y, s,
                          progress=False)
        frame = res.to_frame()
        assert len(frame) == 3 * 2 * 4, frame.shape
        leaked = sorted(m for m in sys.modules if m == "metaeval" or m.startswith("metaeval."))
        assert not leaked, leaked
        import metaeval  # noqa: F401  (the check above can see it)

        assert "metaeval" in sys.modules
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")

