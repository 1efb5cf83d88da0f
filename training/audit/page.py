"""What a person looks at: the precision@k plot and ``audit.html``, the most suspicious
labels with their images inlined (a single file that can be mailed or attached to a ticket)."""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

THUMBNAIL = 160
SCORE_LABELS = {
    "confusion_perplexity": "confusion perplexity",
    "total_entropy": "entropy of the pool mean",
    "disagreement": "disagreement",
    "suspicion": "1 - self-confidence (confident learning)",
}


def plot_precision(report: dict[str, Any], path: Path) -> None:
    """Precision@k of each score against k, Wilson intervals at the reported k, and chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, curve in report["precision_curve"].items():
        ks = range(1, len(curve) + 1)
        (line,) = axes.plot(ks, curve, label=SCORE_LABELS.get(name, name))
        for k, estimate in report["precision_at_k"][name].items():
            if estimate["value"] is not None:
                # Float rounding can put a Wilson bound a hair inside the point at 0 or 1.
                low = max(estimate["value"] - estimate["low"], 0.0)
                high = max(estimate["high"] - estimate["value"], 0.0)
                axes.errorbar(
                    int(k),
                    estimate["value"],
                    yerr=[[low], [high]],
                    color=line.get_color(),
                    fmt="o",
                    capsize=3,
                    markersize=3,
                )
    axes.axhline(report["chance"], color="grey", linestyle="--", label="chance (flip rate)")
    axes.set_xscale("log")
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("k (samples flagged, most suspect first)")
    axes.set_ylabel("precision@k (share that are planted flips)")
    axes.set_title(f"Finding {report['planted']} planted label flips (synthetic demo set)")
    axes.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def thumbnail(data: bytes) -> str | None:
    """A small JPEG of the image as a data URI; None when Pillow cannot read it."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (THUMBNAIL, THUMBNAIL))
            small = image.convert("RGB")
            small.thumbnail((THUMBNAIL, THUMBNAIL))
            buffer = io.BytesIO()
            small.save(buffer, "JPEG", quality=80)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        logger.warning("no thumbnail: %s", exc)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f3f3f3}.flip{background:#fff1d6}.note{max-width:60em}
td.num{text-align:right;font-variant-numeric:tabular-nums}
"""


def write_page(
    path: Path, rows: Sequence[dict[str, Any]], images: Sequence[bytes], summary: str
) -> None:
    """``audit.html``: one table row per listed label, most suspicious first.

    ``images`` holds the encoded bytes of each listed row, in order. Every text is escaped.
    """
    e = html.escape
    head = (
        "<tr><th>#</th><th>image</th><th>path</th><th>given label</th><th>suggested</th>"
        "<th>self-confidence</th><th>confusion perplexity</th><th>entropy of mean</th>"
        "<th>disagreement</th><th>planted flip</th></tr>"
    )
    body = []
    for row, data in zip(rows, images, strict=True):
        uri = thumbnail(data)
        picture = f'<img src="{e(uri)}" alt="{e(row["image"])}">' if uri else "(unreadable)"
        planted = f"yes (was {e(row['original'])})" if row["planted_flip"] else "no"
        body.append(
            f'<tr class="{"flip" if row["planted_flip"] else ""}">'
            f"<td>{row['rank']}</td><td>{picture}</td><td>{e(row['image'])}</td>"
            f"<td>{e(row['given'])}</td><td>{e(row['suggested'])}</td>"
            + "".join(
                f'<td class="num">{row[name]:.3f}</td>'
                for name in (
                    "self_confidence",
                    "confusion_perplexity",
                    "total_entropy",
                    "disagreement",
                )
            )
            + f"<td>{planted}</td></tr>"
        )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>modstream label audit</title><style>{_STYLE}</style></head><body>"
        "<h1>Label audit: most suspicious labels</h1>"
        f'<p class="note">{e(summary)}</p>'
        f"<table>{head}{''.join(body)}</table></body></html>\n"
    )
    path.write_text(page, encoding="utf-8")
