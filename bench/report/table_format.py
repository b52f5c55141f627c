"""One small table model written two ways: Markdown (GitHub pipes) and LaTeX (booktabs).

`bench.report.tables` and `bench.report.compare` build `Table`s; this module only renders them, so that bold,
footnote marks and escaping are decided once. Markdown is written by hand rather than through
tabulate, which would re-parse "65.00" as a number and print it as 65.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class Cell:
    text: str
    bold: bool = False
    mark: str = ""  # a footnote symbol from MARKS, explained in the table's notes


@dataclass
class Table:
    name: str  # label suffix (tab:NAME) and, for single-table files, the file stem
    title: str
    caption: str
    labels: list[str]  # headers of the leading label columns (left-aligned)
    columns: list[tuple[str, ...]]  # value-column headers, outer level first (merged where equal)
    rows: list[tuple[list[str], list[Cell]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


MARKS = ("†", "‡", "§", "¶")
_TEX_MARKS = {"†": r"\dag", "‡": r"\ddag", "§": r"\S", "¶": r"\P"}

# Characters LaTeX treats specially, and the few non-ASCII ones our tables print (pdflatex with
# its default inputenc knows no ±/—/×, so they become commands).
_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
        ">": r"\textgreater{}", "|": r"\textbar{}", "±": r"\ensuremath{\pm}", "—": "---", "–": "--",
        "×": r"\ensuremath{\times}", "·": r"\textperiodcentered{}", "Δ": r"\ensuremath{\Delta}",
        "−": "-", **{m: rf"\textsuperscript{{{c}}}" for m, c in _TEX_MARKS.items()}}
_TEX_RE = re.compile("|".join(re.escape(k) for k in _TEX))


def tex_escape(text: str) -> str:
    return _TEX_RE.sub(lambda m: _TEX[m.group(0)], str(text))


def _md_escape(text: str) -> str:
    # A pipe ends a cell and a star pair would turn a name into emphasis. Underscores stay: inside a
    # word (depth_r18) neither GitHub nor Python-Markdown reads them as emphasis.
    return re.sub(r"([|*])", r"\\\1", str(text))


def _md_cell(cell: Cell) -> str:
    text = _md_escape(cell.text)
    return (f"**{text}**" if cell.bold and text else text) + cell.mark


def _tex_cell(cell: Cell) -> str:
    text = tex_escape(cell.text)
    mark = rf"\textsuperscript{{{_TEX_MARKS[cell.mark]}}}" if cell.mark else ""
    return (rf"\textbf{{{text}}}" if cell.bold and text else text) + mark


def to_markdown(table: Table, level: int = 3) -> str:
    header = [_md_escape(h) for h in table.labels] + [_md_escape(" · ".join(c)) for c in table.columns]
    align = [":--"] * len(table.labels) + ["--:"] * len(table.columns)
    lines = [f"| {' | '.join(header)} |", f"|{'|'.join(align)}|"]
    for labels, cells in table.rows:
        lines.append(f"| {' | '.join([_md_escape(x) for x in labels] + [_md_cell(c) for c in cells])} |")
    parts = [f"{'#' * level} {table.title}", table.caption, "\n".join(lines)] + list(table.notes)
    return "\n\n".join(p for p in parts if p) + "\n"


def _tex_header(table: Table) -> list[str]:
    """Header rows: each outer level merged over equal neighbours, with a \\cmidrule under each."""
    depth = max((len(c) for c in table.columns), default=1)
    columns = [("",) * (depth - len(c)) + tuple(c) for c in table.columns]
    first = len(table.labels) + 1  # the first value column, 1-based
    out = []
    for lv in range(depth):
        spans, rules = [], []
        j = 0
        while j < len(columns):
            k = j
            while k + 1 < len(columns) and columns[k + 1][:lv + 1] == columns[j][:lv + 1]:
                k += 1
            text = tex_escape(columns[j][lv])
            last = lv == depth - 1
            spans.append(text if last or k == j else rf"\multicolumn{{{k - j + 1}}}{{c}}{{{text}}}")
            if not last and text:
                rules.append(rf"\cmidrule(lr){{{first + j}-{first + k}}}")
            j = k + 1
        labels = [tex_escape(x) for x in table.labels] if lv == depth - 1 else [""] * len(table.labels)
        out.append(" & ".join(labels + spans) + r" \\")
        if rules:
            out.append(" ".join(rules))
    return out


def tex_label(name: str) -> str:
    return "tab:" + re.sub(r"[^A-Za-z0-9:.-]+", "-", name)


def to_latex(table: Table) -> str:
    spec = "l" * len(table.labels) + "c" * len(table.columns)
    body = [" & ".join([tex_escape(x) for x in labels] + [_tex_cell(c) for c in cells]) + r" \\"
            for labels, cells in table.rows]
    caption = tex_escape(table.title + (". " + table.caption if table.caption else ""))
    notes = [rf"\par\smallskip{{\footnotesize {tex_escape(n)}}}" for n in table.notes]
    return "\n".join([r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}", rf"\label{{{tex_label(table.name)}}}",
                      r"\begin{tabular}{" + spec + "}", r"\toprule", *_tex_header(table), r"\midrule", *body,
                      r"\bottomrule", r"\end{tabular}", *notes, r"\end{table}"]) + "\n"


TEX_PREAMBLE = r"% Needs \usepackage{booktabs} (\toprule, \midrule, \cmidrule, \bottomrule)."
