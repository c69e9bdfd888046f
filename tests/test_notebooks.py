"""The tutorial notebooks (``notebooks/*.ipynb``) run without errors and are stored without outputs.

Every notebook runs top to bottom in a fresh kernel on the current interpreter: a kernel spec
written to a temporary folder (nothing is registered with Jupyter), whose environment sets
``EVALKIT_NOTEBOOK_SMALL=1`` (each notebook reads it and shrinks itself to a few images, methods and
percentiles), ``MPLBACKEND=Agg``, one BLAS/OpenMP thread, and a private ``IPYTHONDIR`` (so a
user's IPython start-up files cannot interfere). New notebooks are picked up by the glob.

Storage policy: notebooks are committed **without outputs** (a full run takes minutes; outputs
would go stale as the library changes). ``test_stored_without_outputs`` keeps that consistent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
SMALL_FLAG = "EVALKIT_NOTEBOOK_SMALL"
KERNEL_NAME = "evalkit-notebook-test"
CELL_TIMEOUT_S = 300  # generous: CI machines are slow and shared; small runs take seconds a cell


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def _code_cells(path: Path) -> list[dict]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return src if isinstance(src, str) else "".join(src)


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding one kernel spec that starts ``sys.executable -m ipykernel_launcher``."""
    pytest.importorskip("ipykernel")
    root = tmp_path_factory.mktemp("kernels")
    spec = root / KERNEL_NAME
    spec.mkdir()
    env = {
        SMALL_FLAG: "1",
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "IPYTHONDIR": str(root / "ipython"),
    }
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "evalkit notebook tests",
        "language": "python",
        "env": env,
    }), encoding="utf-8")
    return root


def _execute(nb, path: Path, kernel_dir: Path, runtime_dir: Path, monkeypatch) -> None:
    """Run every cell of ``nb`` in a fresh kernel from ``kernel_dir``, with ``path``'s folder as
    the working directory; raises ``nbclient.exceptions.CellExecutionError`` naming the failing
    cell and its traceback."""
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    # connection files go to a temporary folder, not the user's Jupyter runtime folder
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime_dir))
    km = KernelManager(kernel_name=KERNEL_NAME,
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]))
    client = nbclient.NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, startup_timeout=120,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()


def test_notebooks_present() -> None:
    names = {p.name for p in NOTEBOOKS}
    assert {"cam_metrics_and_tuning.ipynb", "deep_feature_factorization.ipynb",
            "quantus_style_evaluation.ipynb"} <= names


@pytest.mark.slow
def test_kernel_runs_the_current_interpreter_in_the_small_configuration(
    kernel_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without this check a broken kernel spec could run another Python or the full-size notebooks.
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import os, sys\nimport matplotlib\n"
        f"print(sys.executable, os.environ['{SMALL_FLAG}'], matplotlib.get_backend(), sep='|')"
    )]
    _execute(nb, tmp_path / "probe.ipynb", kernel_dir, tmp_path / "runtime", monkeypatch)
    out = "".join(o.get("text", "") for o in nb.cells[0].outputs).strip()
    executable, small, backend = out.split("|")
    assert Path(executable).resolve() == Path(sys.executable).resolve()
    assert small == "1"
    assert backend.lower() == "agg"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path: Path, kernel_dir: Path, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    _execute(nb, path, kernel_dir, tmp_path / "runtime", monkeypatch)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors, f"{path.name}: {[(e.ename, e.evalue) for e in errors]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_stored_without_outputs(path: Path) -> None:
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb.get("nbformat") == 4, f"{path.name}: expected nbformat 4"
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (
        f"{path.name}: code cells {dirty} carry outputs or execution counts. Notebooks are "
        "committed without outputs: clear them (Jupyter: Edit > Clear Outputs of All Cells) and "
        "save before committing."
    )
    assert "widgets" not in nb.get("metadata", {}), f"{path.name}: stored widget state"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_reads_the_small_configuration_flag(path: Path) -> None:
    # CI runs the notebooks small; a notebook that ignores the flag would run at full size.
    assert any(SMALL_FLAG in _source(c) for c in _code_cells(path)), (
        f"{path.name} must read the {SMALL_FLAG} environment variable and shrink itself when it "
        "is '1' (few images, methods and percentiles)."
    )


def test_modality_notebooks_present() -> None:
    # one notebook per modality beyond images (issue 19), each on its shipped data and model
    names = {p.name for p in NOTEBOOKS}
    assert {"tabular_evaluation.ipynb", "series_evaluation.ipynb",
            "text_evaluation.ipynb"} <= names
