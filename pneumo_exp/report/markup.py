"""The report as Markdown and as a self-contained HTML page, from a list of blocks."""

from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = ("body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;"
         "font-size:16px;line-height:1.5;color:#222;max-width:80em;margin:0 auto;padding:1em}"
         "table{border-collapse:collapse;margin:1em 0;font-size:14px;display:block;overflow-x:auto}"
         "td,th{border:1px solid #bbb;padding:4px 8px;text-align:left;vertical-align:top}"
         "th{background:#f2f2f2}tr:nth-child(even) td{background:#fafafa}"
         "img{max-width:100%;height:auto;display:block;margin:1em 0}"
         "code{font-family:ui-monospace,Menlo,Consolas,monospace}")
"""report.html's stylesheet, embedded so the file reads alone: a readable font and line width, ruled
tables that scroll sideways rather than overflow, and figures scaled down to the page width."""


def embedded(figure: Path) -> str:
    """A PNG as a data: URI. report.html carries its figures inside: MLflow's artifact viewer shows
    the page in a sandboxed frame, where figures beside it were broken images."""
    return "data:image/png;base64," + base64.b64encode(figure.read_bytes()).decode("ascii")


def render(blocks: list[tuple], markdown: bool, figures: Path | None = None) -> str:
    """Blocks ("h", text) / ("p", text) / ("table", headers, rows) / ("img", file) as md or html;
    html embeds each figure from the folder `figures` where one is given."""
    out = []
    for kind, *body in blocks:
        if kind == "title":
            out.append(f"# {body[0]}\n" if markdown else f"<h1>{html.escape(body[0])}</h1>")
        elif kind == "h":
            out.append(f"## {body[0]}\n" if markdown else f"<h2>{html.escape(body[0])}</h2>")
        elif kind == "p":
            out.append(f"{body[0]}\n" if markdown else f"<p>{html.escape(body[0])}</p>")
        elif kind == "img":
            source = embedded(figures / body[0]) if figures is not None and not markdown else body[0]
            out.append(f"![{body[0]}]({body[0]})\n" if markdown else f'<img src="{source}" alt="{body[0]}">')
        elif markdown:
            headers, rows = body
            lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            out.append("\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n")
        else:
            headers, rows = body
            head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
            cells = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip('`'))}</td>" for c in r) + "</tr>"
                            for r in rows)
            out.append(f"<table><tr>{head}</tr>{cells}</table>")
    if markdown:
        return "\n".join(out)
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<style>{STYLE}</style></head><body>" + "\n".join(out) + "</body></html>\n")
