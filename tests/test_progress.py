"""The progress bar picks the text bar outside a Jupyter kernel and never warns."""

from __future__ import annotations

import io
import warnings

from tqdm.std import tqdm as text_tqdm

from evalkit import _progress


def test_text_bar_outside_jupyter():
    assert _progress._pick() is text_tqdm
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = io.StringIO()
        bar = _progress.tqdm(total=3, file=out)
        bar.update(3)
        bar.close()
    assert isinstance(bar, text_tqdm) and bar.n == 3 and "3/3" in out.getvalue()
