"""One self-contained HTML report (inline PNG plots) from a benchmark's results."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from ..imageio import load_image
from .edits import SWEEPS, apply_edit

__all__ = ["write_report", "summary_markdown", "PAPER_R1"]

# METHOD.md section 6: the authors' 1M-image DISC21 run, R@1 averaged over 14 edits
PAPER_R1 = {"IVF4096,PQ8x8": (0.46, 0.75), "IVF1024,Flat": (0.66, 0.89), "PCA + LSH": (0.78, 0.86),
            "OPQ + PQ": (0.92, 0.94)}
COLOURS = {"passive": "#9aa5b1", "active": "#d1495b"}


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _img(png: bytes) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _bars(indexes: list[dict]) -> bytes:
    fig, axes = plt.subplots(len(indexes), 1, figsize=(12, 2.6 * len(indexes)), squeeze=False)
    for ax, index in zip(axes[:, 0], indexes):
        edits = [r["edit"] for r in index["edits"] if r["mode"] == "passive" and "@" not in r["edit"]]
        x = np.arange(len(edits))
        for shift, mode in ((-0.2, "passive"), (0.2, "active")):
            r1 = [next(r["r1"] for r in index["edits"] if r["edit"] == e and r["mode"] == mode) for e in edits]
            ax.bar(x + shift, r1, 0.4, label=mode, color=COLOURS[mode])
        ax.set_xticks(x, edits, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("R@1")
        ax.set_title(index["factory"], fontsize=10)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return _png(fig)


def _curves(indexes: list[dict], sweeps: list[str]) -> bytes | None:
    if not sweeps:
        return None
    fig, axes = plt.subplots(1, len(sweeps), figsize=(4.5 * len(sweeps), 3.4), squeeze=False)
    for ax, family in zip(axes[0], sweeps):
        for index in indexes:
            for mode, style in (("passive", "--"), ("active", "-")):
                points = [(float(r["edit"].split("@")[1]), r["r1"]) for r in index["edits"]
                          if r["edit"].startswith(f"{family}@") and r["mode"] == mode]
                ax.plot(*zip(*points), style, marker=".", label=f"{index['factory']} {mode}")
        ax.set_xlabel(SWEEPS[family][0])
        ax.set_ylabel("R@1")
        ax.set_title(family, fontsize=10)
        ax.set_ylim(0, 1.05)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return _png(fig)


def _precision_recall(indexes: list[dict]) -> bytes:
    fig, axes = plt.subplots(1, len(indexes), figsize=(4 * len(indexes), 3.4), squeeze=False)
    for ax, index in zip(axes[0], indexes):
        for mode in ("passive", "active"):
            curve = index["icd"][f"{mode}_normalized"]
            ax.plot(curve["recall"], curve["precision"], color=COLOURS[mode],
                    label=f"{mode} uAP {curve['uap']:.2f}")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(index["factory"], fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _quality(indexes: list[dict]) -> bytes:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    for key, ax in zip(("psnr", "ssim"), axes):
        for index in indexes:
            ax.hist(index["quality"][key], bins=20, alpha=0.5, label=index["factory"])
        ax.set_xlabel(key.upper() + (" (dB)" if key == "psnr" else ""))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _thumbnails(index: dict, originals: list[Path], n: int = 3) -> bytes:
    """Original, activated, |difference| x 10, and three edited copies of the activated file."""
    edits = ["brightness_2.0", "auto", "screenshot"]
    fig, axes = plt.subplots(n, 3 + len(edits), figsize=(2.2 * (3 + len(edits)), 2.2 * n), squeeze=False)
    for row, original in zip(axes, originals[:n]):
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


def _summary_table(results: dict) -> str:
    rows = []
    for index in results["indexes"]:
        avg = index["r1_paper_average"]
        cell = {r["mode"]: r["cell"] for r in index["edits"] if r["edit"] == "auto"}
        q = index["quality"]
        rows.append(
            f"<tr><td>{html.escape(index['factory'])}</td><td>{avg['passive']:.3f}</td><td>{avg['active']:.3f}</td>"
            f"<td>{index['icd']['passive_normalized']['uap']:.3f}</td>"
            f"<td>{index['icd']['active_normalized']['uap']:.3f}</td>"
            f"<td>{_fmt(cell.get('passive'))}</td><td>{_fmt(cell.get('active'))}</td>"
            f"<td>{np.mean(q['psnr']):.2f}</td><td>{np.mean(q['ssim']):.4f}</td><td>{np.mean(q['linf']):.1f}</td>"
            f"<td>{_fmt(index['vectors_per_cell'], '.1f')}</td></tr>")
    paper = "".join(f"<tr><td>{k}</td><td>{p:.2f}</td><td>{a:.2f}</td></tr>" for k, (p, a) in PAPER_R1.items())
    return ("<table><tr><th>index</th><th>R@1 passive</th><th>R@1 active</th><th>uAP passive</th>"
            "<th>uAP active</th><th>auto in cell, passive</th><th>auto in cell, active</th><th>PSNR dB</th>"
            "<th>SSIM</th><th>L-inf</th><th>vectors / cell</th></tr>" + "".join(rows) + "</table>"
            "<p>R@1 averaged over the paper's 14 edits; uAP with d<sub>j+1</sub> - d<sub>j</sub> score "
            "normalisation; nprobe " + str(results["setup"]["nprobe"]) + ".</p>"
            "<h3>The paper (1M DISC21 images, SSCD, nprobe 1)</h3><table><tr><th>index</th><th>passive</th>"
            "<th>active</th></tr>" + paper + "</table>")


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def summary_markdown(results: dict) -> str:
    """The summary as a Markdown table (for READMEs), next to the paper's numbers."""
    lines = ["| index | vectors / cell | R@1 passive | R@1 active | uAP passive | uAP active | "
             "auto in its cell, passive -> active | PSNR dB | SSIM |", "|---|---|---|---|---|---|---|---|---|"]
    for index in results["indexes"]:
        avg, icd, q = index["r1_paper_average"], index["icd"], index["quality"]
        cell = {r["mode"]: r["cell"] for r in index["edits"] if r["edit"] == "auto"}
        lines.append(f"| {index['factory']} | {_fmt(index['vectors_per_cell'], '.1f')} | {avg['passive']:.3f} | "
                     f"{avg['active']:.3f} | {icd['passive_normalized']['uap']:.3f} | "
                     f"{icd['active_normalized']['uap']:.3f} | {_fmt(cell.get('passive'), '.2f')} -> "
                     f"{_fmt(cell.get('active'), '.2f')} | {np.mean(q['psnr']):.2f} | {np.mean(q['ssim']):.4f} |")
    return "\n".join(lines) + "\n"


def write_report(results: dict, out: Path) -> Path:
    """Write ``out/report.html`` (self-contained), ``out/summary.md`` and ``out/r1-per-edit.png``."""
    setup, indexes = results["setup"], results["indexes"]
    sweeps = setup["config"]["sweeps"]
    simulated, simulated_train = setup["simulated_distractors"], setup.get("simulated_train", 0)
    banner = (f"<p class=warn>SIMULATED SCALE: {simulated} synthetic distractor descriptors and "
              f"{simulated_train} synthetic training vectors (Gaussian with the real descriptors' mean and "
              "covariance).</p>" if simulated or simulated_train else "")
    counts = ", ".join(f"{k} {setup[k]}" for k in ("train", "references_real", "activated", "nonmatching",
                                                    "simulated_distractors", "nlist"))
    bars, curves = _bars(indexes), _curves(indexes, sweeps)
    (out / "r1-per-edit.png").write_bytes(bars)
    (out / "summary.md").write_text(summary_markdown(results))
    activated = sorted(Path(indexes[0]["activated_dir"]).glob("*.png"))
    corpus_images = [Path(setup["config"]["corpus"]) / "images" / f"{p.stem}.jpg" for p in activated]
    body = [
        "<h1>activeindex robustness benchmark</h1>", banner, f"<p>{counts}; activation preset "
        f"{setup['preset']} ({html.escape(str(setup['activation']))})</p>",
        "<h2>Summary</h2>", _summary_table(results),
        "<h2>R@1 per edit</h2>", _img(bars),
        "<h2>Robustness curves</h2>", _img(curves) if curves else "",
        "<h2>Copy detection: precision-recall (normalised scores)</h2>", _img(_precision_recall(indexes)),
        "<h2>Image quality of the activated files</h2>", _img(_quality(indexes)),
        f"<h2>Examples ({html.escape(indexes[0]['factory'])})</h2>", _img(_thumbnails(indexes[0], corpus_images)),
    ]
    page = ("<!doctype html><meta charset=utf-8><title>activeindex benchmark</title><style>body{font-family:"
            "sans-serif;max-width:1300px;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid "
            "#ccc;padding:3px 8px;text-align:right}.warn{background:#fee;padding:.5em;font-weight:bold}</style>"
            + "\n".join(body))
    path = out / "report.html"
    path.write_text(page)
    return path
