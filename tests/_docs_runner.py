"""Run the Python code blocks of one Markdown page, in order, as a reader would.

``python tests/_docs_runner.py PAGE.md`` runs every fenced ``python`` block of the page
(blocks inside tabs, indented, included) in one namespace, like the cells of a notebook, and
prints one JSON line: ``{"ran": [[line, seconds]], "skipped": [[line, reason]],
"failed": null | {"line", "traceback"}}``.
``tests/test_docs_build.py`` runs it in a subprocess per page (code blocks register metrics and
change global state) from a temporary folder (blocks write files such as ``results.sqlite``).

**Skipping a block.** A block that cannot run offline in the test environment (the Quantus or
pytorch-grad-cam side of a comparison, a GPU or a Ray cluster, a call signature rather than a
call) is marked on the line just before its fence, with the reason::

    <!-- docs-test: skip: the Quantus side -->

The marker is an HTML comment, invisible on the site; the docs tests count the marked blocks
per page, so a new one is a visible change of the test.

**What a block may use without defining it.** Pages show snippets that use the reader's own
model and data; these names stand for them (4 images of the shipped shapes data):

* ``model`` / ``torch_module``: the shipped ``ShapesCNN`` (on the migration pages a small
  ResNet-shaped CNN with ``layer4`` and ``fc``, the layout those pages refer to);
* ``x``, ``y``, ``masks`` (``s``), ``labels`` (= ``y``), their Quantus names ``x_batch``,
  ``y_batch``, ``s_batch``, and ``a`` / ``a_batch`` (Saliency maps); ``cams`` (GradCAM maps);
* ``sklearn_clf`` (a fitted scikit-learn classifier), ``onnx_fn`` (a NumPy function on
  channels-last batches), ``unet`` (a segmentation model) and ``road_mask`` (a region of it),
  ``OtherMetric`` (a metric class);
* ``np``, ``torch``, ``ek`` (evalkit) and ``me`` (metaeval).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
_SKIP = re.compile(r"^\s*<!--\s*docs-test:\s*skip:\s*(?P<reason>\S.*?)\s*-->\s*$")
PYTHON = ("python", "py")
MIGRATION_PAGES = ("migrating-gradcam.md", "migrating-quantus.md")


@dataclass
class Block:
    line: int  #: 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  #: the reason of a skip marker, else None


def code_blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown text (indented ones too), with its skip marker."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:  # closing fences are consumed with their block
            i += 1
            continue
        indent = m.group("indent")
        body = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = _SKIP.match(lines[k]) if k >= 0 else None
        blocks.append(Block(i + 1, m.group("lang"), "\n".join(body) + "\n",
                            marker.group("reason") if marker else None))
        i = j + 1
    return blocks


def _namespace(page: str) -> dict:
    import numpy as np

    import evalkit as ek
    import metaeval as me

    data = ek.datasets.make_shapes(4, seed=0)
    x, y, masks = data.x, data.y, data.masks
    if Path(page).name in MIGRATION_PAGES:
        torch.manual_seed(0)  # the stand-in's initial weights (the global RNG of this process)
        model = TinyResNet().eval()
        layer = "layer4[-1]"
    else:
        model = ek.zoo.load_shapes_cnn()
        layer = "features.conv3"
    a = ek.explain(model, x, y, method="Saliency", reduce_channels="abs_sum")
    cams = ek.explain(model, x, y, method="GradCAM", layer=layer)
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    sklearn_clf = LogisticRegression().fit(rng.random((20, 4)), np.arange(20) % 2)

    def onnx_fn(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.as_tensor(batch).permute(0, 3, 1, 2)).numpy()

    unet = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1).eval()
    road_mask = torch.zeros(32, 32, dtype=torch.bool)
    road_mask[16:, :] = True
    return {"np": np, "torch": torch, "ek": ek, "me": me, "model": model,
            "torch_module": model, "x": x, "y": y, "masks": masks, "s": masks, "labels": y,
            "x_batch": x, "y_batch": y, "s_batch": masks, "a": a, "a_batch": a, "cams": cams,
            "sklearn_clf": sklearn_clf, "onnx_fn": onnx_fn, "unet": unet,
            "road_mask": road_mask, "OtherMetric": ek.metrics.Sparseness,
            "__name__": "__docs__"}


class TinyResNet(torch.nn.Module):
    """A stand-in with a ResNet's layout (``layer4`` a Sequential, ``fc`` the head)."""

    def __init__(self, n_classes: int = 4) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
        self.layer4 = torch.nn.Sequential(
            torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU()),
            torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU()))
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(16, n_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layer4(self.stem(inputs))).flatten(1))


def run_page(page: str) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    text = Path(page).read_text(encoding="utf-8")
    namespace = _namespace(page)
    ran, skipped = [], []
    for block in code_blocks(text):
        if block.lang not in PYTHON:
            continue
        if block.skip is not None:
            skipped.append([block.line, block.skip])
            continue
        started = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # what the page prints
                exec(compile(block.code, f"{page}:{block.line}", "exec"), namespace)
        except BaseException:
            return {"ran": ran, "skipped": skipped,
                    "failed": {"line": block.line, "traceback": traceback.format_exc()}}
        ran.append([block.line, round(time.perf_counter() - started, 2)])
    return {"ran": ran, "skipped": skipped, "failed": None}


if __name__ == "__main__":
    print(json.dumps(run_page(sys.argv[1])))
