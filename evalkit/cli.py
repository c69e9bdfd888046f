"""Command-line interface.

``evalkit demo``            evaluate eight explanation methods on the shipped data and model
                            (images; ``--data tabular|series|text`` for the other modalities)
``evalkit run CONFIG.toml`` run a benchmark described by a TOML file (model, data, methods,
                            metrics, leaderboard, report); see ``evalkit/configs/demo.toml``;
                            a shipped configuration runs by name (``evalkit run
                            since_quantus``: the metrics published since Quantus)
``evalkit metrics``         list the metrics and their metadata
``evalkit methods``         list the explanation methods

``run`` and ``demo`` write a report folder: ``leaderboard.md``, ``leaderboard.html`` (with the
plots embedded), ``leaderboard.tex``, ``leaderboard.csv``, ``summary.csv``, ``scores.csv``
(every per-sample score), ``config.json`` (the fully resolved configuration, seeds and library
versions), ``plots/*.png`` and the crash-safe store ``results.sqlite``: run the same command
again after an interruption and it resumes where it stopped (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import base64
import difflib
import html
import importlib
import inspect
import json
import sys
import time
import traceback
import warnings
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ConfigError", "load_config", "main", "run_config", "validate_config"]

_PLOTS = ("radar", "bars", "distributions", "curves", "explanations")


# ---------------------------------------------------------------------- configuration
def _toml():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError as exc:  # pragma: no cover
            raise ModuleNotFoundError(
                "Reading TOML configurations on Python 3.10 needs `tomli` (pip install tomli)."
            ) from exc
    return tomllib


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """Read a TOML benchmark configuration (None: the shipped demo configuration; the name of
    a shipped configuration, e.g. ``"since_quantus"``, where no such file exists).

    Relative paths inside it (data or model files) are resolved against the file's folder,
    recorded under ``"_base"``.
    """
    tomllib = _toml()
    if path is None:
        text = resources.files("evalkit").joinpath("configs", "demo.toml").read_text("utf-8")
        config = tomllib.loads(text)
        config["_base"] = str(Path.cwd())
        return config
    p = Path(path)
    shipped = resources.files("evalkit").joinpath("configs", f"{p.name}.toml")
    if not p.is_file() and p.name == str(path) and shipped.is_file():
        config = tomllib.loads(shipped.read_text("utf-8"))
        config["_base"] = str(Path.cwd())
        return config
    if not p.is_file():
        names = sorted(f.name[:-5] for f in resources.files("evalkit").joinpath(
            "configs").iterdir() if f.name.endswith(".toml"))
        raise FileNotFoundError(f"No configuration file {str(p)!r} (shipped configurations, "
                                f"by name: {', '.join(names)}).")
    with p.open("rb") as f:
        config = tomllib.load(f)
    config["_base"] = str(p.resolve().parent)
    return config


class ConfigError(ValueError):
    """A benchmark configuration that cannot run: unknown sections or keys, unknown metric or
    method names, wrong types. Raised by :func:`validate_config` before any work is done."""


# The keys each section takes. [methods] and [metrics] hold one table per display name (their
# keys are explain() and constructor arguments, checked against the method and metric);
# [data] and [model] keys depend on their `source`.
_RUN_KEYS = ("name", "seed", "chunk_size", "batch_size", "out")
_REPORT_KEYS = ("plots", "explanation_samples", "explanation_metric")
_MODEL_KEYS = {"shapes_cnn": ("source", "device"),
               "torchscript": ("source", "device", "path"),
               "python": ("source", "device", "factory", "args", "weights")}
_DATA_KEYS = {"npz": ("source", "path", "x", "y", "s", "n", "class_names"),
              "python": ("source", "factory", "args")}
_SECTIONS = ("run", "data", "model", "modality", "methods", "metrics", "leaderboard",
             "report")


def _did_you_mean(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _leaderboard_keys() -> tuple[str, ...]:
    from .leaderboard import Leaderboard

    params = inspect.signature(Leaderboard.__init__).parameters
    return tuple(k for k in params if k not in ("self", "results"))


def _data_keys(source: Any) -> tuple[str, ...] | None:
    if source == "shapes":
        from .datasets import make_shapes

        return ("source", *inspect.signature(make_shapes).parameters)
    return _DATA_KEYS.get(source)


def _check_keys(problems: list[str], where: str, table: Mapping[str, Any],
                allowed: Sequence[str]) -> None:
    for key in table:
        if key not in allowed:
            problems.append(f"{where} has no key {key!r}.{_did_you_mean(key, allowed)} "
                            f"Its keys: {', '.join(allowed)}.")


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check a configuration before any work: every section, key, metric and method name.

    Returns the metrics built from ``[metrics]`` (constructing them checks their
    parameters). Raises :class:`ConfigError` listing every problem, each with a "did you
    mean" suggestion where a known name is close.
    """
    problems: list[str] = []
    for name in config:
        if name == "_base":
            continue
        if name not in _SECTIONS:
            close = difflib.get_close_matches(name, _SECTIONS, n=1, cutoff=0.6)
            hint = f" Did you mean [{close[0]}]?" if close else ""
            problems.append(f"Unknown section [{name}].{hint} "
                            f"Sections: {', '.join(f'[{s}]' for s in _SECTIONS)}.")
        elif not isinstance(config[name], Mapping):
            problems.append(f"[{name}] must be a table.")
    if problems:
        raise ConfigError(" ".join(problems))
    for name in ("data", "metrics", "methods"):
        if not config.get(name):
            problems.append(f"The configuration needs a [{name}] table.")
    _check_keys(problems, "[run]", config.get("run", {}), _RUN_KEYS)
    _check_keys(problems, "[report]", config.get("report", {}), _REPORT_KEYS)
    _check_keys(problems, "[leaderboard]", config.get("leaderboard", {}), _leaderboard_keys())
    data = config.get("data", {})
    data_keys = _data_keys(data.get("source", "shapes"))
    if data_keys is not None:  # an unknown source is reported by the loader
        _check_keys(problems, f"[data] (source = {data.get('source', 'shapes')!r})", data,
                    data_keys)
    model = config.get("model", {})
    model_keys = _MODEL_KEYS.get(model.get("source", "shapes_cnn"))
    if model_keys is not None:
        _check_keys(problems, f"[model] (source = {model.get('source', 'shapes_cnn')!r})",
                    model, model_keys)
    plots = config.get("report", {}).get("plots", _PLOTS)
    for kind in [plots] if isinstance(plots, str) else plots:
        if kind not in _PLOTS:
            problems.append(f"[report] plots has no plot {kind!r}.{_did_you_mean(kind, _PLOTS)}"
                            f" Plots: {', '.join(_PLOTS)}.")
    metrics: dict[str, Any] = {}
    for name, params in config.get("metrics", {}).items():
        try:
            metrics.update(_build_metrics({name: params}))
        except (KeyError, TypeError, ValueError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            problems.append(f"[metrics.{name}]: {_unknown_parameter_hint(name, params, message)}")
    problems += _method_problems(config.get("methods", {}))
    try:
        _build_modality(config.get("modality", {}))
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise ConfigError(" ".join(problems))
    return metrics


def _unknown_parameter_hint(name: str, params: Any, message: str) -> str:
    """The metric's own message, with a "did you mean" for a misspelled parameter."""
    from . import metrics as ek_metrics

    try:
        valid = sorted(ek_metrics.get(dict(params or {}).get("metric", name))._param_names())
    except Exception:  # the message already says what is wrong
        return message
    hints = []
    for key in dict(params or {}):
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        if key != "metric" and key not in valid and close:
            hints.append(f"Did you mean {close[0]!r} for {key!r}?")
    return " ".join([message, *hints])


def _method_problems(spec: Mapping[str, Any]) -> list[str]:
    from evalkit.explain import explainer_info

    problems = []
    for name, params in spec.items():
        params = dict(params or {})
        if "explain_fn" in params:
            continue
        try:
            explainer_info(params.get("method", name))
        except (KeyError, ValueError) as exc:
            problems.append(f"[methods.{name}]: {str(exc).split(' Available:')[0]}")
    return problems


def _section(config: Mapping[str, Any], name: str, required: bool = True) -> dict[str, Any]:
    value = config.get(name, {})
    if not isinstance(value, Mapping):
        raise ValueError(f"[{name}] must be a table in the configuration.")
    if required and not value:
        raise ValueError(f"The configuration needs a [{name}] table.")
    return dict(value)


def _import(path: str, what: str) -> Any:
    if not isinstance(path, str) or ":" not in path:
        raise ValueError(f"{what} must be 'package.module:attribute'; got {path!r}.")
    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _path(base: str, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(base) / p


def _load_data(spec: Mapping[str, Any], base: str) -> dict[str, Any]:
    spec = dict(spec)
    source = spec.pop("source", "shapes")
    if source == "shapes":
        from .datasets import make_shapes

        n = int(spec.pop("n", 64))
        data = make_shapes(n, **spec)
        return {"x": data.x, "y": data.y, "s": data.masks, "class_names": list(data.class_names)}
    if source == "npz":
        if "path" not in spec:
            raise ValueError("[data] source = 'npz' needs `path`.")
        with np.load(_path(base, spec["path"]), allow_pickle=False) as f:
            x_key, y_key = spec.get("x", "x"), spec.get("y", "y")
            s_key = spec.get("s", "s" if "s" in f.files else "masks")
            out = {"x": f[x_key], "y": f[y_key], "s": f[s_key] if s_key in f.files else None}
        n = spec.get("n")
        if n is not None:
            out = {k: None if v is None else v[: int(n)] for k, v in out.items()}
        out["class_names"] = spec.get("class_names")
        return out
    if source == "python":
        factory = _import(spec.pop("factory", None), "[data] factory")
        obj = factory(**spec.pop("args", {}))
        if isinstance(obj, Mapping):
            get = obj.get
        elif isinstance(obj, tuple):
            keys = ("x", "y", "s")
            get = dict(zip(keys, obj, strict=False)).get
        else:
            def get(key: str, default: Any = None) -> Any:
                return getattr(obj, key, default)
        s = get("s") if get("s") is not None else get("masks")
        return {"x": get("x"), "y": get("y"), "s": s, "class_names": get("class_names")}
    raise ValueError(f"[data] source must be 'shapes', 'npz' or 'python'; got {source!r}.")


def _load_model(spec: Mapping[str, Any], base: str) -> Any:
    import torch

    spec = dict(spec)
    source = spec.pop("source", "shapes_cnn")
    device = spec.pop("device", None)
    if source == "shapes_cnn":
        from .zoo import load_shapes_cnn

        model = load_shapes_cnn()
    elif source == "torchscript":
        if "path" not in spec:
            raise ValueError("[model] source = 'torchscript' needs `path`.")
        model = torch.jit.load(str(_path(base, spec["path"])), map_location="cpu")
    elif source == "python":
        factory = _import(spec.pop("factory", None), "[model] factory")
        model = factory(**spec.pop("args", {}))
        weights = spec.pop("weights", None)
        if weights is not None:
            state = torch.load(_path(base, weights), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
    else:
        raise ValueError(f"[model] source must be 'shapes_cnn', 'torchscript' or 'python'; "
                         f"got {source!r}.")
    if isinstance(model, torch.nn.Module):
        model = model.eval()
        if device is not None:
            model = model.to(device)
    return model


def _build_metrics(spec: Mapping[str, Any]) -> dict[str, Any]:
    from . import metrics as ek_metrics

    out = {}
    for name, params in spec.items():
        params = dict(params or {})
        cls = ek_metrics.get(params.pop("metric", name))
        out[name] = cls(**params)
    return out


def _build_modality(spec: Mapping[str, Any]) -> Any:
    """The optional ``[modality]`` table as a :class:`~evalkit.modality.Modality` passed to
    ``evaluate(..., modality=...)`` (None without the table: inferred from ``x``).

    ``kind`` names the modality (``"image"``, ``"series"``, ``"tabular"``, ``"tokens"``); every
    other key is an argument of its class: a table's column spec (``kinds``, ``groups``,
    ``categories`` with column indices as keys, ``scales``, ``flip_prob``;
    :class:`~evalkit.modality.TabularModality`), the ``mask_token_id`` / ``pad_token_id`` of
    token ids, the ``value_range`` of integer images. E.g.::

        [modality]
        kind = "tabular"
        groups = [[9, 10, 11]]      # a one-hot block: one feature
    """
    from .modality import MODALITIES, TabularModality

    if not spec:
        return None
    params = dict(spec)
    kind = params.pop("kind", None)
    if kind not in MODALITIES:
        raise ValueError(f"[modality] kind must be one of {sorted(MODALITIES)}; got {kind!r}.")
    cls = MODALITIES[kind]
    if cls is TabularModality and isinstance(params.get("categories"), Mapping):
        # TOML keys are strings: the column indices
        try:
            params["categories"] = {int(c): v for c, v in params["categories"].items()}
        except ValueError as err:
            raise ValueError("[modality] categories must map column indices to their values, "
                             f"e.g. {{ 5 = [0, 1, 2] }}; got {params['categories']!r}.") from err
    try:
        return cls(**params)
    except TypeError as err:
        raise ValueError(f"[modality] for kind = {kind!r}: {err}") from err


def _build_methods(spec: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, params in spec.items():
        params = dict(params or {})
        fn = params.pop("explain_fn", None)
        if fn is not None:
            params["explain_fn"] = _import(fn, f"[methods.{name}] explain_fn")
        out[name] = params
    return out


# ---------------------------------------------------------------------- running
def run_config(
    config: Mapping[str, Any],
    *,
    out: str | Path | None = None,
    store: str | Path | bool | None = True,
    fresh: bool = False,
    progress: bool = True,
    report: bool = True,
    echo: Any = print,
) -> dict[str, Any]:
    """Run a benchmark configuration (see :func:`load_config`) and write its report.

    Returns ``{"results", "leaderboard", "files", "out", "accuracy", "seconds"}``.
    ``store=True`` keeps the store in the output folder, a path puts it there, False runs
    without one.
    """
    import torch

    from .evaluate import evaluate
    from .models import wrap_model

    started = time.perf_counter()
    metrics = validate_config(config)  # before any data, model or report work
    base = str(config.get("_base", Path.cwd()))
    run = _section(config, "run", required=False)
    methods = _build_methods(_section(config, "methods"))
    data = _load_data(_section(config, "data"), base)
    model = _load_model(_section(config, "model", required=False), base)
    modality = _build_modality(_section(config, "modality", required=False))
    board_kw = _section(config, "leaderboard", required=False)
    report_kw = _section(config, "report", required=False)

    name = str(run.get("name", "evalkit run"))
    out_dir = Path(out) if out is not None else _path(base, run.get("out", "evalkit-report"))
    out_dir.mkdir(parents=True, exist_ok=True)
    store_path: Path | None = None
    if store is True:
        store_path = out_dir / "results.sqlite"
    elif store not in (None, False):
        store_path = Path(store)
    if fresh and store_path is not None:
        for suffix in ("", "-wal", "-shm"):
            Path(str(store_path) + suffix).unlink(missing_ok=True)

    accuracy = None
    if data["y"] is not None and isinstance(model, torch.nn.Module):
        wrapper = wrap_model(model)
        with torch.inference_mode():
            pred = wrapper.target.predict(wrapper.predict(data["x"])).cpu().numpy()
        accuracy = float((pred == np.asarray(data["y"])).mean())
    n = len(data["x"])
    acc_text = "" if accuracy is None else f", model accuracy {accuracy:.1%}"
    echo(f"{name}: {len(methods)} methods x {len(metrics)} metrics x {n} samples{acc_text}")

    with warnings.catch_warnings():
        # Undefined scores and failed cells are reported in the summary and the report.
        warnings.simplefilter("ignore")
        results = evaluate(metrics, methods, model, data["x"], data["y"], data["s"],
                           seed=int(run.get("seed", 0)), chunk_size=run.get("chunk_size"),
                           batch_size=run.get("batch_size"), progress=progress,
                           store=None if store_path is None else str(store_path),
                           modality=modality)
    rescale = board_kw.pop("rescale", None) or None
    board = results.leaderboard(rescale=rescale, **board_kw)
    files: dict[str, Path] = {}
    if report:
        files = _write_report(results, board, out_dir, name=name, data=data, model=model,
                              methods=methods, report_kw=report_kw, seed=int(run.get("seed", 0)),
                              accuracy=accuracy)
    if store_path is not None:
        files["store"] = store_path
    return {"results": results, "leaderboard": board, "files": files, "out": out_dir,
            "accuracy": accuracy, "seconds": time.perf_counter() - started}


def _write_report(results, board, out_dir: Path, *, name: str, data, model, methods,
                  report_kw: Mapping[str, Any], seed: int, accuracy: float | None
                  ) -> dict[str, Path]:
    from .evaluate import explain_methods

    files: dict[str, Path] = {}

    def write(key: str, filename: str, text: str) -> None:
        path = out_dir / filename
        path.write_text(text, encoding="utf-8")
        files[key] = path

    write("markdown", "leaderboard.md", f"# {name}\n\n{board.to_markdown()}\n")
    write("latex", "leaderboard.tex", board.to_latex() + "\n")
    board.to_csv(out_dir / "leaderboard.csv")
    files["csv"] = out_dir / "leaderboard.csv"
    results.summary().to_csv(out_dir / "summary.csv")
    files["summary"] = out_dir / "summary.csv"
    results.to_frame().to_csv(out_dir / "scores.csv", index=False)
    files["scores"] = out_dir / "scores.csv"
    write("config", "config.json", json.dumps(results.config(), indent=2, default=str) + "\n")
    if results.errors:
        write("errors", "errors.txt", "\n\n".join(
            f"{e}\n{e.traceback}" for e in results.errors.values()))

    plots = list(report_kw.get("plots", _PLOTS))
    unknown = set(plots) - set(_PLOTS)
    if unknown:
        raise ValueError(f"[report] plots must be among {_PLOTS}; got {sorted(unknown)}.")
    images: list[tuple[str, Path]] = []
    if plots:
        plot_dir = out_dir / "plots"
        plot_dir.mkdir(exist_ok=True)
        for kind in plots:
            try:
                if kind == "curves" and not results.curves:
                    continue
                if kind == "explanations":
                    k = min(int(report_kw.get("explanation_samples", 4)), results.n)
                    if np.asarray(data["x"]).ndim != 4 or k == 0:
                        continue
                    idx = list(range(k))
                    sub_s = None if data["s"] is None else data["s"][idx]
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        maps = explain_methods(methods, model, data["x"][idx], data["y"][idx],
                                               sub_s, seed=seed)
                    metric = report_kw.get("explanation_metric") or results.metrics[0]
                    fig = results.plot("explanations", x=data["x"][idx], attributions=maps,
                                       metric=metric, y=data["y"][idx],
                                       class_names=data.get("class_names"))
                elif kind in ("radar", "bars"):
                    fig = results.plot(kind, leaderboard=board)
                else:
                    fig = results.plot(kind)
            except Exception as exc:  # a plot must not lose the results
                print(f"warning: the {kind} plot failed: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
                continue
            path = plot_dir / f"{kind}.png"
            fig.savefig(path, dpi=110)
            images.append((kind, path))
            files[f"plot_{kind}"] = path
    write("html", "leaderboard.html", _html_report(results, board, name, images, accuracy))
    return files


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table.evalkit-leaderboard{border-collapse:collapse;font-size:14px}
table.evalkit-leaderboard td,table.evalkit-leaderboard th{border-bottom:1px solid #ddd;
padding:4px 8px;text-align:right}
table.evalkit-leaderboard td:first-child,table.evalkit-leaderboard th:first-child{text-align:left}
caption{caption-side:bottom;text-align:left;color:#555;padding-top:6px;font-size:13px}
img{max-width:100%;margin:1em 0}pre{background:#f6f6f6;padding:1em;overflow:auto}"""


def _html_report(results, board, name: str, images: Sequence[tuple[str, Path]],
                 accuracy: float | None) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)}"
             f"</title><style>{_CSS}</style></head><body>", f"<h1>{html.escape(name)}</h1>"]
    acc = "" if accuracy is None else f"; model accuracy {accuracy:.1%}"
    parts.append(f"<p>{len(results.methods)} methods x {len(results.metrics)} metrics x "
                 f"{results.n} samples{acc}; evalkit {html.escape(results.versions['evalkit'])}"
                 f", seed {results.seed}.</p>")
    parts.append(board.to_html())
    for kind, path in images:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(kind)}</h2><img alt='{kind}' "
                     f"src='data:image/png;base64,{data}'>")
    if results.errors:
        parts.append("<h2>Failed cells</h2><ul>" + "".join(
            f"<li>{html.escape(str(e))}</li>" for e in results.errors.values()) + "</ul>")
    parts.append("<h2>Summary</h2>" + results.summary().drop(columns=["error"]).to_html(
        float_format=lambda v: f"{v:.4g}"))
    parts.append("<h2>Configuration</h2><details><summary>resolved configuration, seeds, "
                 "versions</summary><pre>" + html.escape(json.dumps(results.config(), indent=2,
                                                                   default=str)) +
                 "</pre></details></body></html>")
    return "\n".join(parts)


def _print_outcome(outcome: Mapping[str, Any]) -> None:
    results, board = outcome["results"], outcome["leaderboard"]
    print()
    print(board.to_markdown())
    resumed = sum(results.resumed.values())
    total = len(results.methods) * len(results.metrics)
    if results.errors:
        n_err = len(results.errors)
        print(f"\n{n_err} of {_count(total, 'cell')} could not be computed:")
        for e in results.errors.values():
            print(f"  {e.method} x {e.metric}: {e.message.splitlines()[0][:300]}")
    print(f"\nfinished in {outcome['seconds']:.1f} s", end="")
    if resumed:
        print(f" ({resumed} units read back from the store; pass --fresh to recompute)", end="")
    print(f"; {_count(total, 'cell')}")
    if outcome["files"]:
        out = outcome["out"]
        print(f"report: {out / 'leaderboard.html'} (and .md, .tex, .csv, plots/ in {out})")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise SystemExit("--threads must be >= 1")
        torch.set_num_threads(args.threads)


def _run(args: argparse.Namespace) -> int:
    _threads(args)
    config = load_config(args.config)
    store: Any = False if args.no_store else (args.store or True)
    outcome = run_config(config, out=args.out, store=store, fresh=args.fresh,
                         progress=not args.no_progress, report=not args.no_report)
    _print_outcome(outcome)
    return _exit_status(outcome, allow_failures=args.allow_failures)


def _exit_status(outcome: Mapping[str, Any], *, allow_failures: bool) -> int:
    """1 when cells failed (their scores are missing from the report), unless allowed."""
    results = outcome["results"]
    n_failed = len(results.errors)
    if not n_failed:
        return 0
    total = len(results.methods) * len(results.metrics)
    if allow_failures:
        print(f"{n_failed} of {_count(total, 'cell')} failed (allowed by --allow-failures).",
              file=sys.stderr)
        return 0
    print(f"evalkit: {n_failed} of {_count(total, 'cell')} failed; exit status 1 (pass "
          "--allow-failures to accept a run with failed cells).", file=sys.stderr)
    return 1


#: the data sets of ``evalkit demo --data``: each has its configuration in evalkit/configs/
DEMO_DATA = ("images", "tabular", "series", "text")


def _demo_config(data: str) -> dict[str, Any]:
    """The shipped configuration of ``evalkit demo --data {data}``."""
    if data == "images":
        return load_config(None)
    if data not in DEMO_DATA:
        raise ValueError(f"--data must be one of {', '.join(DEMO_DATA)}; got {data!r}.")
    text = resources.files("evalkit").joinpath("configs", f"demo_{data}.toml").read_text("utf-8")
    config = _toml().loads(text)
    config["_base"] = str(Path.cwd())
    return config


def _demo(args: argparse.Namespace) -> int:
    _threads(args)
    config = _demo_config(args.data)
    # the images' data table takes `n` itself; the other data sets are built by a factory
    # whose arguments live in `args`
    sizes = config["data"] if "n" in config["data"] else config["data"].setdefault("args", {})
    if args.n is not None:
        sizes["n"] = args.n
    if args.quick:
        sizes["n"] = 16
        config["leaderboard"]["n_boot"] = 200
    store: Any = False if args.no_store else True
    out = args.out or ("evalkit-demo" if args.data == "images" else f"evalkit-demo-{args.data}")
    outcome = run_config(config, out=out, store=store, fresh=args.fresh,
                         progress=not args.no_progress, report=not args.no_report)
    _print_outcome(outcome)
    return 0


def _metrics(args: argparse.Namespace) -> int:
    from .metrics import list_metrics

    frame = list_metrics(args.family)
    cols = ["name", "family", "higher_is_better", "needs_masks", "re_explains", "stochastic"]
    print(frame[cols].to_string(index=False))
    return 0


def _methods(args: argparse.Namespace) -> int:
    from evalkit.explain import available_methods

    print("\n".join(available_methods()))
    return 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fresh", action="store_true",
                   help="delete the store first and recompute everything")
    p.add_argument("--no-store", action="store_true", help="run without the crash-safe store")
    p.add_argument("--no-report", action="store_true",
                   help="print the leaderboard only (no report files)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_debug(p)


def _add_debug(p: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    # SUPPRESS on the subcommands: `evalkit --debug run ...` and `evalkit run ... --debug`
    # both work (a subparser's default would otherwise overwrite the main parser's value)
    p.add_argument("--debug", action="store_true", default=default,
                   help="show the full traceback of an error (default: one line)")


def _error_line(exc: BaseException) -> str:
    """An exception as one line for the terminal (KeyError's str() adds quotes)."""
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    message = " ".join(str(message).split())
    kind = "" if isinstance(exc, ConfigError) else f"{type(exc).__name__}: "
    return f"evalkit: error: {kind}{message} (--debug shows the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evalkit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_debug(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a benchmark described by a TOML configuration")
    run.add_argument("config", help="the TOML file (see evalkit/configs/demo.toml), or the "
                     "name of a shipped one (since_quantus)")
    run.add_argument("--out", default=None,
                     help="report folder (default: [run] out, else ./evalkit-report)")
    run.add_argument("--store", default=None,
                     help="the SQLite store (default: results.sqlite in the report folder)")
    run.add_argument("--threads", type=int, default=None,
                     help="torch CPU threads (default: torch's choice)")
    run.add_argument("--allow-failures", action="store_true",
                     help="exit with status 0 even when some (method, metric) cells failed "
                          "(default: status 1)")
    _add_run_options(run)
    run.set_defaults(func=_run)
    demo = sub.add_parser("demo", help="evaluate explanation methods on the shipped data and model")
    demo.add_argument("--data", choices=DEMO_DATA, default="images",
                      help="which shipped data set and model (default images: the shapes and "
                           "ShapesCNN; tabular: TabularMLP, series: SeriesCNN, text: "
                           "TextEncoder; configurations in evalkit/configs/demo_*.toml)")
    demo.add_argument("--n", type=int, default=None,
                      help="number of samples (default 64; 128 rows for tabular)")
    demo.add_argument("--quick", action="store_true", help="a 16-sample run")
    demo.add_argument("--out", default=None,
                      help="report folder (default ./evalkit-demo, ./evalkit-demo-DATA for "
                           "the other data sets)")
    demo.add_argument("--threads", type=int, default=1,
                      help="torch CPU threads (default 1: the demo's models are so small that "
                           "more threads cost more in synchronisation than they save)")
    _add_run_options(demo)
    demo.set_defaults(func=_demo)
    metrics = sub.add_parser("metrics", help="list the metrics and their metadata")
    metrics.add_argument("--family", default=None)
    metrics.set_defaults(func=_metrics)
    methods = sub.add_parser("methods", help="list the explanation methods")
    methods.set_defaults(func=_methods)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # one line by default; the traceback with --debug
        if args.debug:
            traceback.print_exc()
        else:
            print(_error_line(exc), file=sys.stderr)
        return 2 if isinstance(exc, ConfigError | FileNotFoundError) else 1


if __name__ == "__main__":
    sys.exit(main())
