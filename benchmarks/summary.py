"""Collect every benchmark JSON in a folder into one results.md (a section per file) and one results.json.

Usage::

    python benchmarks/summary.py RESULTS_DIR [--md results.md] [--json results.json] [--short] [--plot FILE.png]

Reads ``*.json`` files written with ``--json`` by ``conch bench`` and the ``bench_*.py`` scripts
(schema ``conch-bench/1``: ``{"name", "kind", "device", "info", "results": [rows]}``; files that are a bare
list of rows or one flat object are accepted too). Each file becomes a markdown table. A short headline
table (one line per row: benchmark, case, metric, conch, baseline, ratio, what the baseline is, check) goes
at the top of results.md and, with ``--short``, to stdout last. Rows of end-to-end scripts (written with
``harness.ratio_row``) are read through the keys ``case``/``name``, ``metric``, ``conch``, ``baseline`` (or
``torch``), ``baseline_name``, ``ratio`` and ``ok``; every ratio is "above 1: conch better". ``--plot`` draws
the kernel rows of every file into one figure (``harness.plot``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import harness  # noqa: E402

SHORT_COLUMNS = [
    ("benchmark", "bench", "s"), ("case", "case", "s"), ("metric", "metric", "s"), ("conch", "conch", ".4g"),
    ("baseline", "baseline", ".4g"), ("ratio", "ratio", ".3g"), ("vs", "vs", "s"), ("check", "check", "s"),
]  # fmt: skip
#: Widest "vs" cell on stdout (results.md keeps the whole name).
VS_WIDTH = 20

_LABEL_KEYS = ("case", "name", "op", "model", "config", "benchmark")
_SKIP_GENERIC = ("baseline_name", "torch_name")


def load_dir(folder) -> tuple[dict, list]:
    """({file name: document}, [problems]) for every ``*.json`` under ``folder`` (sorted, recursive)."""
    docs, problems = {}, []
    for root, _, files in sorted(os.walk(folder)):
        for fn in sorted(files):
            if not fn.endswith(".json") or fn in ("results.json",):
                continue
            path = os.path.join(root, fn)
            rel = os.path.relpath(path, folder)
            try:
                with open(path) as f:
                    docs[rel] = normalise(json.load(f), default_name=os.path.splitext(fn)[0])
            except (OSError, ValueError) as e:
                problems.append(f"{rel}: unreadable ({type(e).__name__}: {e})")
    return docs, problems


def normalise(doc, default_name="results") -> dict:
    """Any benchmark JSON -> a conch-bench/1-shaped dict (bare lists and flat objects are wrapped)."""
    if isinstance(doc, list):
        return {"schema": harness.SCHEMA, "name": default_name, "kind": "other", "results": doc}
    if not isinstance(doc, dict):
        raise ValueError(f"expected an object or a list, got {type(doc).__name__}")
    if isinstance(doc.get("results"), list):
        out = dict(doc)
        out.setdefault("name", default_name)
        out.setdefault("kind", "other")
        return out
    # A free-form object (nested dicts of numbers): one row per leaf, named by its key path.
    rows = [{"name": k, "value": v} for k, v in _leaves(doc)]
    return {"schema": harness.SCHEMA, "name": default_name, "kind": "flat", "results": rows}


def _leaves(obj, prefix=""):
    """(dotted key path, value) for every scalar leaf of nested dicts; short scalar lists become strings."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list) and all(_scalar(x) for x in obj):
        yield prefix, ", ".join(str(x) for x in obj)
    elif _scalar(obj):
        yield prefix, obj


def _scalar(v):
    return v is None or isinstance(v, (str, int, float, bool))


def short_rows(name, doc) -> list:
    """Headline rows of one document (see the module docstring for the keys read)."""
    out = []
    for r in doc.get("results", []):
        if not isinstance(r, dict):
            continue
        if doc.get("kind") == "kernels" or ("op" in r and "speedup" in r):
            shape = "x".join(str(s) for s in r.get("shape") or [])
            ok = r.get("ok")
            out.append({
                "bench": doc.get("name", name), "case": f"{r.get('op')} {shape} {r.get('dtype')}",
                "metric": r.get("unit") or "ms", "conch": r.get("throughput", r.get("time_ms")),
                "baseline": r.get("baseline_throughput", r.get("baseline_ms")), "ratio": r.get("speedup"),
                "vs": r.get("baseline_name") or "",
                "check": "ok" if ok else ("WRONG" if r.get("err") is not None else "ERROR"),
                "_group": (r.get("op"), r.get("dtype")), "_size": r.get("size") or 0,
            })  # fmt: skip
            continue
        if doc.get("kind") == "flat":  # free-form JSON: only its ratios make the headline
            if "ratio" in str(r.get("name", "")).lower() and isinstance(r.get("value"), (int, float)):
                out.append({"bench": doc.get("name", name), "case": r["name"], "metric": "ratio (as written)",
                            "conch": None, "baseline": None, "ratio": r["value"], "vs": "", "check": ""})  # fmt: skip
            continue
        label = next((str(r[k]) for k in _LABEL_KEYS if isinstance(r.get(k), str)), "")
        base = r.get("baseline", r.get("torch"))
        ok = r.get("ok")
        vs = r.get("baseline_name") or ("torch" if "torch" in r else "")
        out.append({
            "bench": doc.get("name", name), "case": label, "metric": r.get("metric") or r.get("unit") or "",
            "conch": r.get("conch"), "baseline": base if not isinstance(base, str) else None,
            "ratio": r.get("ratio"), "vs": str(vs), "check": "" if ok is None else ("ok" if ok else "FAILED"),
        })  # fmt: skip
    return out


def condensed(short, max_rows=70) -> list:
    """The stdout headline: failed rows first, then the largest size of each kernel (op, dtype) and every
    end-to-end row, at most ``max_rows``."""
    best = {}
    for r in short:
        g = r.get("_group")
        if g is None or r["check"] != "ok":
            continue
        key = (r["bench"],) + tuple(g)
        if key not in best or r["_size"] > best[key]["_size"]:
            best[key] = r
    keep = {id(r) for r in best.values()}
    out = [r for r in short if r.get("_group") is None or id(r) in keep or r["check"] != "ok"]
    out.sort(key=lambda r: r["check"] in ("ok", ""))  # stable: failures first, so the cut never hides them
    return out[:max_rows]


def _clip(text, width):
    text = str(text or "")
    return text if len(text) <= width else text[: width - 1] + "~"


def generic_columns(rows, limit=14) -> list:
    """(header, key, fmt) for the scalar keys of ``rows`` in first-seen order."""
    keys = []
    for r in rows:
        for k, v in r.items():
            if k not in keys and k not in _SKIP_GENERIC and (_scalar(v) or isinstance(v, list)):
                keys.append(k)
    cols = []
    for k in keys[:limit]:
        sample = next((r[k] for r in rows if r.get(k) is not None), None)
        spec = ".4g" if isinstance(sample, float) else ("shape" if isinstance(sample, list) else "s")
        cols.append((k, k, spec))
    return cols


def section(name, doc) -> str:
    """The markdown section of one document: heading, device/commit/date line, table."""
    info = doc.get("info") or {}
    rows = [r for r in doc.get("results", []) if isinstance(r, dict)]
    head = f"## {doc.get('name', name)} ({doc.get('kind', 'other')}; `{name}`)\n\n"
    meta = []
    for label, v in (("device", doc.get("device")), ("commit", info.get("commit")), ("date", info.get("date")),
                     ("timer", doc.get("timer"))):  # fmt: skip
        if v:
            meta.append(f"{label}: {v}")
    peaks = doc.get("peaks") or {}
    if peaks:
        meta.append(
            "measured peaks: "
            + "; ".join(
                f"{k} {v.get('tflops') or v.get('gbps')} ({v.get('how')})"
                for k, v in peaks.items()
                if isinstance(v, dict)
            )  # fmt: skip
        )
    body = head + ("  \n".join(meta) + "\n\n" if meta else "")
    if not rows:
        return body + "(no results)\n"
    if doc.get("kind") == "kernels":
        return body + harness.format_table(harness.table_rows(rows), harness.KERNEL_COLUMNS, markdown=True) + "\n"
    return body + harness.format_table(rows, generic_columns(rows), markdown=True) + "\n"


def summarise(folder, md_path=None, json_path=None) -> dict:
    """Build results.md / results.json from ``folder``; returns the summary document."""
    docs, problems = load_dir(folder)
    short = [s for name, doc in docs.items() for s in short_rows(name, doc)]
    failed = [s for s in short if s["check"] in ("WRONG", "ERROR", "FAILED")]
    summary = {
        "schema": "conch-bench-summary/1", "files": docs, "short": short, "problems": problems,
        "failures": len(failed), "commit": harness.git_commit(),
    }  # fmt: skip
    if md_path:
        parts = [f"# conch benchmark results\n\ncommit {summary['commit']}; {len(docs)} result files; "
                 f"{len(failed)} failed checks\n"]  # fmt: skip
        if problems:
            parts.append("Problems:\n\n" + "\n".join(f"- {p}" for p in problems) + "\n")
        if short:
            parts.append("## Headline\n\nratio: conch over the baseline measured in the same run (for times and "
                         "memory, baseline over conch), so above 1 means conch is better.\n\n"
                         + harness.format_table(short, SHORT_COLUMNS, markdown=True) + "\n")  # fmt: skip
        parts += [section(name, doc) for name, doc in docs.items()]
        d = os.path.dirname(os.path.abspath(md_path))
        os.makedirs(d, exist_ok=True)
        with open(md_path, "w") as f:
            f.write("\n".join(parts))
    if json_path:
        harness.write_json(json_path, summary)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="folder holding the benchmark JSON files")
    p.add_argument("--md", default=None, help="write the markdown summary here (default FOLDER/results.md)")
    p.add_argument("--json", default=None, help="write the merged JSON here (default FOLDER/results.json)")
    p.add_argument("--short", action="store_true", help="print the headline table to stdout")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="plot every kernel row into one figure")
    args = p.parse_args(argv)
    if not os.path.isdir(args.folder):
        print(f"summary: {args.folder} is not a folder", file=sys.stderr)
        return 2
    s = summarise(args.folder, args.md or os.path.join(args.folder, "results.md"),
                  args.json or os.path.join(args.folder, "results.json"))  # fmt: skip
    for prob in s["problems"]:
        print(f"summary: {prob}", file=sys.stderr)
    if args.plot:
        kernel_rows = [r for doc in s["files"].values() if doc.get("kind") == "kernels"
                       for r in doc.get("results", []) if isinstance(r, dict)]  # fmt: skip
        try:
            n = harness.plot(kernel_rows, args.plot, title="conch kernels") if kernel_rows else 0
            print(f"summary: {n} kernel panels in {args.plot}" if n else "summary: no kernel rows to plot",
                  file=sys.stderr)  # fmt: skip
        except Exception as e:  # a plot must not hide the table
            print(f"summary: plot failed ({type(e).__name__}: {e})", file=sys.stderr)
    if args.short:
        rows = [dict(r, vs=_clip(r.get("vs", ""), VS_WIDTH)) for r in condensed(s["short"])]
        if len(rows) < len(s["short"]):
            print(f"(largest size per kernel and dtype, and every failure: {len(rows)} of {len(s['short'])} rows; "
                  "all in results.md)")  # fmt: skip
        print(harness.format_table(rows, SHORT_COLUMNS) if rows else "(no benchmark results)")
        print(f"{len(s['files'])} result files, {len(s['short'])} rows, {s['failures']} failed checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
