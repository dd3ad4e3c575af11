"""One self-contained HTML report (inline PNG plots) from a benchmark's results."""
from __future__ import annotations

import base64
import html
import io
import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from ..edits import SWEEPS, apply_edit
from ..imageio import load_image
from .baselines import BASELINES
from .operating import DECISION_NOTE, decision_cells, decision_setup, point_rows

__all__ = ["write_report", "summary_markdown", "summary_rows", "per_edit_markdown", "per_edit_rows",
           "activations_figure", "PAPER_R1"]

# METHOD.md section 6: the authors' 1M-image DISC21 run, R@1 averaged over 14 edits
PAPER_R1 = {"IVF4096,PQ8x8": (0.46, 0.75), "IVF1024,Flat": (0.66, 0.89), "PCA + LSH": (0.78, 0.86),
            "OPQ + PQ": (0.92, 0.94)}
COLOURS = {"pdq": "#edae49", "exact_sscd": "#00798c", "passive": "#9aa5b1", "active": "#d1495b"}
COMPARED_COLOURS = ("#30638e", "#66a182", "#8d6a9f")  # the compared presets', in order
NAMES = {"pdq": "PDQ", "exact_sscd": "exact SSCD", "passive": "passive", "active": "active",
         "passive, views": "passive with views", "active, views": "active with views"}
BASELINES_NOTE = ("PDQ: a hit when the nearest reference by Hamming distance is the original, at any distance "
                  "(plain nearest-neighbour top-1, as every index; a tie is a miss). Exact SSCD: exhaustive search "
                  "over the uncompressed descriptors. Both on the passive queries, among the same references and "
                  "originals as the indexes.")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _img(png: bytes) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _label(index: dict) -> str:
    return index["factory"] + ("" if index["target"] == "index" else f" ({index['target']})")


def _name(mode: str) -> str:
    """A column's name: "active (robust)" for a compared preset, "robust - active" for a difference."""
    if "-" in mode:
        return " - ".join(map(_name, mode.split("-")))
    return NAMES.get(mode, f"active ({mode})")


def _activated(index: dict) -> list[str]:
    """The modes of an index that query activated files: active, then the compared presets."""
    return ["active", *index.get("compared", {})]


def _modes(index: dict) -> list[str]:
    """The R@1 columns of an index: the baselines, passive, then `_activated`."""
    return [*BASELINES, "passive", *_activated(index)]


def _differences(index: dict) -> list[str]:
    """The paired differences the evaluation computed for an index ("a-b"), in its order."""
    return [mode for mode in index["r1_paper_average"]["ci"] if "-" in mode]


def _colour(index: dict, mode: str) -> str:
    return COLOURS.get(mode) or COMPARED_COLOURS[list(index["compared"]).index(mode) % len(COMPARED_COLOURS)]


def _bars(indexes: list[dict]) -> bytes:
    """R@1 per edit, the baselines, passive and active, with 95 % intervals."""
    fig, axes = plt.subplots(len(indexes), 1, figsize=(12, 2.6 * len(indexes)), squeeze=False)
    for ax, index in zip(axes[:, 0], indexes):
        rows = {(r["edit"], r["mode"]): r for r in index["edits"]}
        edits, modes = _fixed_edits(index), _modes(index)
        x, width = np.arange(len(edits)), 0.8 / len(modes)
        for i, mode in enumerate(modes):
            r1 = np.array([rows[e, mode]["r1"] for e in edits])
            ci = np.array([rows[e, mode]["r1_ci"] for e in edits]).T
            ax.bar(x + (i - (len(modes) - 1) / 2) * width, r1, width, label=_name(mode), color=_colour(index, mode),
                   yerr=np.abs(ci - r1), capsize=2)
        ax.set_xticks(x, edits, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("R@1")
        ax.set_title(f"{_label(index)}, {_fmt(index['vectors_per_cell'], '.0f')} vectors / cell", fontsize=10)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return _png(fig)


def _nlist_curve(indexes: list[dict], baselines: dict) -> bytes | None:
    """R@1 over the paper's edits against the number of cells, per factory: the paper's message; the baselines,
    which have no cells, as horizontal lines."""
    families: dict[str, list[dict]] = {}
    for index in indexes:
        if index["nlist"]:
            families.setdefault(index["spec"], []).append(index)
    if not any(len(v) > 1 for v in families.values()):
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for spec, runs in families.items():
        nlists = [r["nlist"] for r in runs]
        for mode, style in (("passive", "--"), ("active", "-")):
            mean = np.array([r["r1_paper_average"][mode] for r in runs])
            ci = np.array([r["r1_paper_average"]["ci"][mode] for r in runs]).T
            ax.errorbar(nlists, mean, yerr=np.abs(ci - mean), fmt=style, marker="o", capsize=3,
                        label=f"{spec.replace('{nlist}', 'N')} {mode}")
    for name in BASELINES:
        ax.axhline(baselines[name]["r1_paper_average"]["r1"], color=COLOURS[name], linestyle=":", label=NAMES[name])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("nlist (IVF cells)")
    ax.set_ylabel("R@1, mean of the paper's 14 edits")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _curves(indexes: list[dict], sweeps: list[str]) -> bytes | None:
    """R@1 along each sweep, passive and active per index; the baselines (the same in every index) once."""
    if not sweeps:
        return None
    lines = [(indexes[0], name, ":", NAMES[name], COLOURS[name]) for name in BASELINES]
    lines += [(index, mode, style, f"{_label(index)} {mode}", None) for index in indexes
              for mode, style in (("passive", "--"), ("active", "-"))]
    fig, axes = plt.subplots(1, len(sweeps), figsize=(4.5 * len(sweeps), 3.4), squeeze=False)
    for ax, family in zip(axes[0], sweeps):
        for index, mode, style, label, colour in lines:
            points = [(float(r["edit"].split("@")[1]), r["r1"]) for r in index["edits"]
                      if r["edit"].startswith(f"{family}@") and r["mode"] == mode]
            if points:
                ax.plot(*zip(*points), style, marker=".", label=label, color=colour)
        ax.set_xlabel(SWEEPS[family][0])
        ax.set_ylabel("R@1")
        ax.set_title(family, fontsize=10)
        ax.set_ylim(0, 1.05)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return _png(fig)


def _precision_recall(indexes: list[dict]) -> bytes:
    fig, axes = plt.subplots(2, len(indexes), figsize=(3.6 * len(indexes), 6.4), squeeze=False)
    for column, index in enumerate(indexes):
        for row, name in enumerate(("plain", "normalized")):
            ax = axes[row, column]
            for mode in ("passive", "active"):
                curve = index["icd"][name][mode]
                ax.plot(curve["recall"], curve["precision"], color=COLOURS[mode],
                        label=f"{mode} uAP {curve['uap']:.2f}")
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
            ax.set_title(f"{_label(index)}\n{name} scores", fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _scaling(curve: dict) -> bytes:
    """R@1 (active, passive) against the PSNR that each scaling costs; the variants as points of their own."""
    fig, ax = plt.subplots(figsize=(8, 4.6))
    points = [p for p in curve["points"] if not p.get("variant")]
    psnr = [p["psnr"] for p in points]
    for mode in ("passive", "active"):
        mean = np.array([p["r1"][mode] for p in points])
        ci = np.array([p["r1"]["ci"][mode] for p in points]).T
        ax.errorbar(psnr, mean, yerr=np.abs(ci - mean), marker="o", capsize=3, color=COLOURS[mode],
                    label=f"{mode}, scalings")
    variants = [p for p in curve["points"] if p.get("variant")]
    styles = zip(itertools.cycle(plt.cm.tab10.colors), itertools.cycle("s^Dvp<>h"))
    for p, (colour, marker) in zip(variants, styles):
        ci = np.array(p["r1"]["ci"]["active"])[:, None]
        ax.errorbar([p["psnr"]], [p["r1"]["active"]], yerr=np.abs(ci - p["r1"]["active"]), marker=marker, capsize=3,
                    color=colour, linestyle="none", label=f"active, {p['name']} ({p['passes']} passes)")
    for p in curve["points"]:
        label = p.get("name", f"s={p['scaling']:g}") if not p.get("variant") else ""
        ax.annotate(label + (" (default)" if p["default"] else ""), (p["psnr"], p["r1"]["active"]),
                    fontsize=7, xytext=(3, 4), textcoords="offset points")
    ax.set_xlabel("PSNR of the activated files (dB)")
    ax.set_ylabel("R@1, mean of the paper's 14 edits")
    ax.set_title(curve["factory"], fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _quality(indexes: list[dict]) -> bytes:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    for key, ax in zip(("psnr", "ssim"), axes):
        for index in indexes:
            ax.hist(index["quality"][key], bins=20, alpha=0.5, label=_label(index))
            for mode, compared in index.get("compared", {}).items():
                ax.hist(compared["quality"][key], bins=20, alpha=0.5, label=f"{_label(index)}, {_name(mode)}")
        ax.set_xlabel(key.upper() + (" (dB)" if key == "psnr" else ""))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _thumbnails(index: dict, n: int = 3) -> bytes:
    """Original, activated, |difference| x 10, and three edited copies of the activated file."""
    edits = ["brightness_2.0", "auto", "screenshot"]
    fig, axes = plt.subplots(n, 3 + len(edits), figsize=(2.2 * (3 + len(edits)), 2.2 * n), squeeze=False)
    for row, original in zip(axes, map(Path, index["originals"][:n])):
        o = load_image(original)
        a = load_image(Path(index["activated_dir"]) / f"{original.stem}.png")
        diff = np.clip(np.abs(a.astype(int) - o.astype(int)) * 10, 0, 255).astype(np.uint8)
        panels = [("original", o), ("activated", a), ("|diff| x 10", diff)]
        panels += [(e, apply_edit(e, a, seed=1)) for e in edits]
        for ax, (title, image) in zip(row, panels):
            ax.imshow(Image.fromarray(image))
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def activations_figure(index: dict, image: int = 0) -> bytes:
    """One original, then each activation of it (the main preset's, the compared presets') and its change,
    amplified by one factor for all (the 99.5th percentile of the largest change becomes white), with the PSNR:
    where each spends its budget."""
    original = Path(index["originals"][image])
    o = load_image(original).astype(int)
    modes = {"active": index["activated_dir"]} | {m: c["activated_dir"] for m, c in index.get("compared", {}).items()}
    activated = {mode: load_image(next(Path(folder).glob(f"{original.stem}.*")))  # .png, or a published format's
                 for mode, folder in modes.items()}
    changes = {mode: np.abs(a.astype(int) - o) for mode, a in activated.items()}
    gain = 255 / max(1.0, max(float(np.percentile(c, 99.5)) for c in changes.values()))
    fig, axes = plt.subplots(1, 1 + 2 * len(modes), figsize=(3 * (1 + 2 * len(modes)), 3.2))
    axes[0].imshow(o.astype(np.uint8))
    axes[0].set_title("original", fontsize=9)
    for mode, ax_image, ax_change in zip(modes, axes[1::2], axes[2::2]):
        psnr = (index["quality"] if mode == "active" else index["compared"][mode]["quality"])["psnr"][image]
        ax_image.imshow(activated[mode])
        ax_image.set_title(f"{_name(mode)}, {psnr:.1f} dB", fontsize=9)
        ax_change.imshow(np.clip(changes[mode] * gain, 0, 255).astype(np.uint8))
        ax_change.set_title(f"|change| x {gain:.0f}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _with_ci(value: float, ci, spec: str = ".3f") -> str:
    """'0.812 [0.76, 0.86]'; a difference gets its sign."""
    sign = "+" if spec.startswith("+") else ""
    return f"{format(value, spec)} [{ci[0]:{sign}.2f}, {ci[1]:{sign}.2f}]"


def _point(point: dict | None) -> str:
    return "-" if point is None else _with_ci(point["rate"], point["ci"])


def _views_cells(index: dict) -> dict[str, str]:
    """The views setting (bench/views.py): R@1 with views, per edit, and its cost beside the same index without."""
    views, rows = index["views"], {(r["edit"], r["mode"]): r for r in index["edits"]}
    average = index["r1_paper_average"]
    cells = {f"R@1 {mode} with views": _with_ci(average[f"{mode}, views"], average["ci"][f"{mode}, views"])
             for mode in ("passive", "active")}
    for edit in sorted({e for e, _ in rows}):
        if (edit, "active, views") in rows:
            cells[f"{edit}: active -> with views"] = (f"{rows[edit, 'active']['r1']:.3f} -> "
                                                      f"{rows[edit, 'active, views']['r1']:.3f} "
                                                      "[{:.2f}, {:.2f}]".format(*rows[edit, "active, views"]["r1_ci"]))
    cost = views["encode_seconds"]
    cells["views: index vectors"] = f"{views['ntotal']} ({views['ntotal'] / views['ntotal_without']:.2f}x)"
    cells["views: encoding s / image"] = (f"{cost['whole']:.3f} -> {cost['with_views']:.3f} "
                                          f"({cost['ratio']:.2f}x)")
    ms = views["query_ms"]
    cells["views: search ms / query"] = f"{ms['without']:.3f} -> {ms['with']:.3f} ({ms['with'] / ms['without']:.2f}x)"
    return cells


def summary_rows(results: dict) -> list[dict[str, str]]:
    """One row of formatted figures per index (shared by the HTML and Markdown tables); the baselines' R@1, the
    same for every index, next to the index's."""
    rows = []
    baselines = {NAMES[name]: results["baselines"][name]["r1_paper_average"] for name in BASELINES}
    for index in results["indexes"]:
        avg, q = index["r1_paper_average"], index["quality"]
        cell = {r["mode"]: r["cell"] for r in index["edits"] if r["edit"] == "auto"}
        row = {"index": _label(index), "vectors / cell": _fmt(index["vectors_per_cell"], ".1f")}
        row |= {f"R@1 {name}": _with_ci(b["r1"], b["ci"]) for name, b in baselines.items()}
        row |= {f"R@1 {_name(mode)}": _with_ci(avg[mode], avg["ci"][mode]) for mode in ["passive", *_activated(index)]}
        row |= {f"R@1 {_name(diff)}": _with_ci(avg[diff], avg["ci"][diff], "+.3f") for diff in _differences(index)}
        if index.get("views"):
            row |= _views_cells(index)
        if index["icd"]:
            for name in ("plain", "normalized"):
                entry = index["icd"][name]
                change = _with_ci(entry["active-passive"]["uap"], entry["active-passive"]["ci"], "+.3f")
                row[f"uAP {name}, passive -> active"] = (f"{entry['passive']['uap']:.3f} -> "
                                                         f"{entry['active']['uap']:.3f} ({change})")
            row |= {f"auto, top-1 distance at 1 % false, {NAMES[name]}": _point(
                results["baselines"][name]["operating_point"]) for name in BASELINES}
            point = index["icd"]["operating_point"]
            change = _with_ci(point["active-passive"]["rate"], point["active-passive"]["ci"], "+.3f")
            row["auto, ADC distance at 1 % false (the paper's comparison), passive -> active"] = (
                f"{_point(point['passive'])} -> {_point(point['active'])} ({change})")
            row["auto in its cell"] = f"{_fmt(cell.get('passive'), '.2f')} -> {_fmt(cell.get('active'), '.2f')}"
        row |= decision_cells(index)
        row["PSNR dB"] = f"{np.mean(q['psnr']):.2f}"
        row["SSIM"] = f"{np.mean(q['ssim']):.4f}"
        for mode, compared in index.get("compared", {}).items():
            row[f"PSNR dB, {_name(mode)}"] = f"{np.mean(compared['quality']['psnr']):.2f}"
        rows.append(row)
    return rows


def _html_table(rows: list[dict[str, str]]) -> str:
    """Rows of formatted figures (one dict each, the same keys) as an HTML table."""
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0]) if rows else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row.values()) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _markdown_table(rows: list[dict[str, str]]) -> str:
    """Rows of formatted figures (one dict each, the same keys) as a Markdown table."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(row.values()) + " |" for row in rows]) + "\n"


def _summary_table(results: dict) -> str:
    rows = summary_rows(results)
    setup = results["setup"]
    lengths = "; ".join(f"{_label(i)}: {i['icd']['list_length']['passive']['mean']:.0f} (min "
                        f"{i['icd']['list_length']['passive']['min']}, max {i['icd']['list_length']['passive']['max']})"
                        for i in results["indexes"] if i["icd"])
    paper = "".join(f"<tr><td>{k}</td><td>{p:.2f}</td><td>{a:.2f}</td></tr>" for k, (p, a) in PAPER_R1.items())
    return (_html_table(rows) +
            f"<p>R@1: plain nearest-neighbour top-1, mean over the paper's 14 edits of {setup['activated']} activated "
            f"images, 95 % bootstrap intervals in brackets ({setup['bootstrap']} resamples of images, paired for the "
            "difference; per edit: Wilson's interval, Newcombe's for a paired difference). True copies at 1 % and "
            f"0.1 % false: {html.escape(DECISION_NOTE.format(**decision_setup(setup)))} "
            "The paper's comparison (auto, ADC distance at 1 % false): the share of 'auto' copies whose top-1 is their "
            "original at an index distance below the threshold that calls at most 1 % of the "
            f"{setup['nonmatching']} non-matching 'auto' queries a copy (a rule no interface ships). uAP: "
            f"'auto' copies of the activated images pooled with {setup['nonmatching']} non-matching queries; plain "
            "= -distance, normalized = d<sub>j+1</sub> - d<sub>j</sub> (the authors'), ties share one threshold; "
            f"interval of the difference in brackets. Result-list lengths (k {setup['k']}, nprobe "
            f"{setup['nprobe']}): {html.escape(lengths)}; lists shorter than k favour the normalized score. "
            f"{html.escape(BASELINES_NOTE)}</p>"
            "<h3>The paper (1M DISC21 images, SSCD, nprobe 1)</h3><table><tr><th>index</th><th>passive</th>"
            "<th>active</th></tr>" + paper + "</table>")


def curve_markdown(curve: dict) -> str:
    """The R@1-vs-PSNR points as a Markdown table: cost, quality, R@1 and the paired difference from the
    main preset."""
    rows = [{"settings": p.get("name", f"s={p['scaling']:g}") + (" (default)" if p["default"] else ""),
             "network passes / image": str(p.get("passes", "-")), "PSNR dB": f"{p['psnr']:.2f}",
             "R@1 active": _with_ci(p["r1"]["active"], p["r1"]["ci"]["active"]),
             "vs the default, paired": _with_ci(p["vs_default"]["r1"], p["vs_default"]["ci"], "+.3f")
             if "vs_default" in p else "-"} for p in curve["points"]]
    return f"R@1 over the paper's edits against PSNR, {curve['factory']}:\n\n{_markdown_table(rows)}"


def summary_markdown(results: dict) -> str:
    """The summary as a Markdown table (for READMEs)."""
    rows = summary_rows(results)
    return _markdown_table(rows) if rows else ""


def _fixed_edits(index: dict) -> list[str]:
    """The index's fixed edits (not the sweeps' points), in order."""
    return [r["edit"] for r in index["edits"] if r["mode"] == "passive" and "@" not in r["edit"]]


def per_edit_rows(index: dict) -> list[dict[str, str]]:
    """One index's R@1 per fixed edit: PDQ, exact SSCD, passive, active, the compared presets, and the paired
    differences, each with its 95 % interval; and cell agreement (shared by the HTML and Markdown tables)."""
    rows = {(r["edit"], r["mode"]): r for r in index["edits"]}
    compared = ["passive", *_activated(index)]
    table = []
    for edit in _fixed_edits(index):
        row = {"edit": edit}
        for mode in _modes(index) + _differences(index):
            r, spec = rows[edit, mode], "+.2f" if "-" in mode else ".2f"
            row[_name(mode)] = _with_ci(r["r1"], r["r1_ci"], spec)
        cells = " -> ".join(_fmt(rows[edit, mode]["cell"], ".2f") for mode in compared)
        row["in its cell, " + " -> ".join(map(_name, compared))] = cells
        table.append(row)
    return table


def _per_edit_title(index: dict) -> str:
    return f"{_label(index)}, R@1 per edit ({len(index['originals'])} images, 95 % intervals)"


def per_edit_markdown(index: dict) -> str:
    """One index's R@1 per fixed edit (`per_edit_rows`), then its copy decisions per edit, as Markdown."""
    return (f"{_per_edit_title(index)}:\n\n{_markdown_table(per_edit_rows(index))}\n{BASELINES_NOTE}\n\n"
            f"{_decision_title(index)}:\n\n{_markdown_table(point_rows(index, _decision_modes(index)))}\n")


def _decision_title(index: dict) -> str:
    return (f"{_label(index)}, true copies at 1 % and 0.1 % false copies per edit, the shipped rule "
            f"({index['decision']['nonmatching']} non-matching queries, 95 % Wilson intervals)")


def _decision_modes(index: dict) -> list[str]:
    return [mode for mode in index["decision"]["points"] if "-" not in mode]


def _setup_html(setup: dict) -> str:
    """Where the numbers come from: the corpus, per-source counts, training and reference sets, deviations."""
    sources = "".join(f"<tr><td>{split}</td><td>{sum(c.values())}</td><td>"
                      f"{html.escape(', '.join(f'{k} {v}' for k, v in c.items()))}</td></tr>"
                      for split, c in setup["sources"].items())
    train, refs = setup["train"], setup["references"]
    skipped = "".join(f"<li>{html.escape(line)}</li>" for line in setup.get("skipped", []))
    deviations = "".join(f"<li>{html.escape(line)}</li>" for line in setup["auto_deviations"])
    return (f"<p>{html.escape(setup['corpus'])}</p><table><tr><th>split (used)</th><th>images</th><th>per source</th>"
            f"</tr>{sources}</table><p>Training vectors: {train['photos']} photos + {train['crops']} random crops of "
            f"them = {train['total']}. References: {refs['photos']} distractor photos + {refs['crops']} random crops "
            f"of them = {refs['total']}, plus the {setup['activated']} originals. Crops keep 25-100 % of the area, "
            "aspect ratio 3/4-4/3, mirrored half of the time (seeded). No synthetic vectors.</p>"
            + (f"<p>Skipped: <ul>{skipped}</ul></p>" if skipped else "")
            + f"<p>Activation: preset {html.escape(setup['preset'])} ({html.escape(str(setup['activation']))}).</p>"
            + ("<p>Non-matching queries used as they are (already edited).</p>" if setup["nonmatching_edited"] else
               "<p>Non-matching queries: one 'auto' edit of each non-matching image, from a seed stream independent "
               "of the matching queries'.</p>")
            + f"<h3>'auto' against the DISC21 generator: deviations</h3><ul>{deviations}</ul>")


def write_report(results: dict, out: Path) -> Path:
    """Write ``out/report.html`` (self-contained), ``out/summary.md`` and ``out/r1-per-edit.png``."""
    setup, indexes = results["setup"], results["indexes"]
    bars = _bars(indexes) if indexes else None
    nlists, curves = _nlist_curve(indexes, results["baselines"]), _curves(indexes, setup["config"]["sweeps"])
    if bars:
        (out / "r1-per-edit.png").write_bytes(bars)
    if nlists:
        (out / "r1-vs-nlist.png").write_bytes(nlists)
    curve = [curve_markdown(results["scaling_curve"])] if "scaling_curve" in results else []
    (out / "summary.md").write_text("\n".join([summary_markdown(results), *map(per_edit_markdown, indexes), *curve]))
    body = ["<h1>activeindex robustness benchmark</h1>", "<h2>Setup</h2>", _setup_html(setup),
            "<h2>Summary</h2>", _summary_table(results) if indexes else "<p>No index was run.</p>"]
    if nlists:
        body += ["<h2>Gain against the number of cells</h2>", _img(nlists)]
    if "scaling_curve" in results:
        scaling = _scaling(results["scaling_curve"])
        (out / "r1-vs-psnr.png").write_bytes(scaling)
        body += ["<h2>R@1 under edits against PSNR (activation scaling)</h2>", _img(scaling)]
    if indexes:
        body += ["<h2>R@1 per edit (95 % intervals)</h2>", _img(bars), f"<p>{html.escape(BASELINES_NOTE)}</p>"]
        body += [f"<h3>{html.escape(_per_edit_title(i))}</h3>{_html_table(per_edit_rows(i))}" for i in indexes]
        body += ["<h2>Copy decisions per edit: the shipped rule</h2>",
                 f"<p>{html.escape(DECISION_NOTE.format(**decision_setup(setup)))}</p>"]
        body += [f"<h3>{html.escape(_decision_title(i))}</h3>{_html_table(point_rows(i, _decision_modes(i)))}"
                 for i in indexes]
        body += ["<h2>Robustness curves</h2>", _img(curves) if curves else ""]
        with_icd = [i for i in indexes if i["icd"]]
        if with_icd:
            body += ["<h2>Copy detection: precision-recall</h2>", _img(_precision_recall(with_icd))]
        body += ["<h2>Image quality of the activated files</h2>", _img(_quality(indexes)),
                 f"<h2>Examples ({html.escape(_label(indexes[0]))})</h2>", _img(_thumbnails(indexes[0]))]
        activations = activations_figure(indexes[0])
        (out / "activations.png").write_bytes(activations)
        body += ["<h3>Where each activation spends its budget</h3>", _img(activations)]
    page = ("<!doctype html><meta charset=utf-8><title>activeindex benchmark</title><style>body{font-family:"
            "sans-serif;max-width:1300px;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid "
            "#ccc;padding:3px 8px;text-align:right}</style>" + "\n".join(body))
    path = out / "report.html"
    path.write_text(page)
    return path
