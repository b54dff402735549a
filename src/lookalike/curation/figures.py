"""Pictures of a run's calibration and evaluation: Plotly figures for the App, PNG files for the CLI.

Each picture is first a small renderer-neutral spec (title, axes, traces,
marked thresholds), so the panel's Plotly figure and the CLI's PNG (drawn with
matplotlib: Plotly's own PNG export needs a Chrome install) show the same data.
"""

import os

from lookalike.core.paths import check_output_folder

THRESHOLD_COLOURS = {"no-match threshold": "#d62728", "duplicate threshold": "#2ca02c"}


def _marks(calibration):
    marks = []
    if calibration.threshold is not None:
        marks.append({"x": float(calibration.threshold), "label": "no-match threshold"})
    if calibration.duplicate_threshold is not None:
        marks.append({"x": float(calibration.duplicate_threshold),
                      "label": "duplicate threshold"})
    return marks


def threshold_curves(calibration):
    """Precision, recall and F1 against the distance threshold (labelled calibrations)."""
    curve = calibration.curve
    if not curve:
        return None
    x = curve["thresholds"]
    return {
        "name": "threshold_curves",
        "title": f"Precision / recall / F1 against distance ({calibration.method})",
        "xaxis": "cosine distance threshold", "yaxis": "value",
        "traces": [{"type": "line", "name": m, "x": x, "y": curve[m]}
                   for m in ("precision", "recall", "f1")],
        "marks": _marks(calibration)[:1],
    }


def precision_recall(calibration):
    curve = calibration.curve
    if not curve:
        return None
    return {
        "name": "precision_recall",
        "title": "Precision-recall curve of matching (leave-one-out)",
        "xaxis": "recall", "yaxis": "precision",
        "traces": [{"type": "line", "name": "precision", "x": curve["recall"],
                    "y": curve["precision"]}],
        "marks": [],
    }


def distance_histogram(calibration):
    hist = calibration.nn_histogram
    if not hist:
        return None
    edges = hist["edges"]
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    return {
        "name": "distance_histogram",
        "title": "Nearest-neighbour distances with the chosen thresholds",
        "xaxis": "cosine distance to the nearest other sample", "yaxis": "samples",
        "traces": [{"type": "bar", "name": "samples", "x": centres, "y": hist["counts"],
                    "width": edges[1] - edges[0] if len(edges) > 1 else 0.01}],
        "marks": _marks(calibration),
    }


def confusion_matrix(evaluation):
    conf = evaluation.confusion
    if not conf:
        return None
    return {
        "name": "confusion_matrix",
        "title": f"Match or no match at distance {conf['threshold']:.4g}",
        "xaxis": "predicted", "yaxis": "true",
        "traces": [{"type": "heatmap", "name": "count", "x": conf["classes"],
                    "y": conf["classes"], "z": conf["matrix"]}],
        "marks": [],
    }


def run_figures(index):
    """The specs available from a run's saved records, by name."""
    from lookalike.curation.calibrate import Calibration
    from lookalike.curation.evaluation import RetrievalEvaluation

    curation = getattr(index, "curation", None) or {}
    specs = []
    if curation.get("calibration"):
        calibration = Calibration.from_record(curation["calibration"])
        specs += [threshold_curves(calibration), precision_recall(calibration),
                  distance_histogram(calibration)]
    if curation.get("evaluation"):
        specs.append(confusion_matrix(RetrievalEvaluation.from_record(curation["evaluation"])))
    return {s["name"]: s for s in specs if s}


def to_plotly(spec):
    """A ``plotly.graph_objects.Figure`` of a spec."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for t in spec["traces"]:
        if t["type"] == "line":
            fig.add_trace(go.Scatter(x=t["x"], y=t["y"], mode="lines", name=t["name"]))
        elif t["type"] == "bar":
            fig.add_trace(go.Bar(x=t["x"], y=t["y"], name=t["name"], width=t.get("width")))
        elif t["type"] == "heatmap":
            fig.add_trace(go.Heatmap(x=t["x"], y=t["y"], z=t["z"], colorscale="Blues",
                                     text=t["z"], texttemplate="%{text}"))
    for n, m in enumerate(spec["marks"]):  # labels on alternate sides: never on top of each other
        fig.add_vline(x=m["x"], line_dash="dash",
                      line_color=THRESHOLD_COLOURS.get(m["label"], "black"),
                      annotation_text=f"{m['label']} {m['x']:.4g}",
                      annotation_position="top left" if n % 2 else "top right")
    fig.update_layout(title=spec["title"], xaxis_title=spec["xaxis"],
                      yaxis_title=spec["yaxis"], template="plotly_dark",
                      margin=dict(l=50, r=20, t=50, b=50))
    if spec["traces"] and spec["traces"][0]["type"] == "heatmap":
        fig.update_yaxes(autorange="reversed")
    return fig


def save_png(spec, path):
    """Draws a spec with matplotlib into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    try:
        for t in spec["traces"]:
            if t["type"] == "line":
                ax.plot(t["x"], t["y"], label=t["name"])
            elif t["type"] == "bar":
                ax.bar(t["x"], t["y"], width=t.get("width") or 0.8, label=t["name"])
            elif t["type"] == "heatmap":
                im = ax.imshow(t["z"], cmap="Blues")
                ax.set_xticks(range(len(t["x"])), t["x"], rotation=45, ha="right")
                ax.set_yticks(range(len(t["y"])), t["y"])
                for r, row in enumerate(t["z"]):
                    for c, v in enumerate(row):
                        ax.text(c, r, str(v), ha="center", va="center", fontsize=7)
                fig.colorbar(im, ax=ax)
        for m in spec["marks"]:
            ax.axvline(m["x"], linestyle="--", color=THRESHOLD_COLOURS.get(m["label"], "black"),
                       label=f"{m['label']} {m['x']:.4g}")
        ax.set_title(spec["title"], fontsize=10)
        ax.set_xlabel(spec["xaxis"])
        ax.set_ylabel(spec["yaxis"])
        if any(t["type"] != "heatmap" for t in spec["traces"]):
            ax.legend(fontsize=8)
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def write_pngs(index, directory):
    """One PNG per available picture of the run; returns their paths."""
    specs = run_figures(index)
    if specs:
        directory = check_output_folder(directory)
    return [save_png(spec, os.path.join(directory, f"{index.key}_{name}.png"))
            for name, spec in specs.items()]
