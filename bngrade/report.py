"""The class report: one self-contained, offline HTML page an instructor can act on.

    python -m bngrade.report A [--course DIR] [--out reports/A/index.html]   (make report A=...)

What it reads (after autograde), all of it as data:
- the gradebook (nbgrader's API): every student's score per test and in total;
- the graded notebooks, autograded/<student>/A/*.ipynb: the verdict lines the
  grader wrote in each test cell ("PASS  (hidden) eval mode, mode='eval', ...",
  "FAIL  ...", "hint: ..."), which give the pass rate of every case and the
  hints, i.e. the common mistakes;
- the integrity reports, reports/A/<student>/*.txt (any that say more than
  "nothing to report"), ranked by how many lines of evidence they hold;
- the submitted notebooks' solution cells, compared pairwise with copydetect
  (winnowed token fingerprints), the released notebook's cells being the
  boilerplate to ignore.

The page: figures are PNGs inlined as data: URIs; there is no script at all,
and a Content-Security-Policy forbids any (default-src 'none'), so nothing a
student wrote can run in the instructor's browser. Every name and every piece
of student code or text is HTML-escaped.
"""
import argparse
import base64
import html
import io
import json
import re
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

CASE = re.compile(r"^(PASS|FAIL)  (.*)$")
HEAD = re.compile(r"^(\S+): \d+ of \d+ cases passed")
CONT = "      "


def _text(outputs):
    return "".join("".join(o.get("text", "")) if isinstance(o.get("text"), (list, str)) else ""
                   for o in outputs if o.get("output_type") == "stream")


def verdicts(notebook):
    """{test id: [(passed, description, hidden)], hints: {test id: [hint]}} from a graded notebook's test cells."""
    nb = json.loads(Path(notebook).read_text())
    cases, hints = {}, {}
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.get("cell_type") != "code" or not meta.get("grade") or meta.get("solution"):
            continue
        lines, joined = _text(cell.get("outputs", [])).splitlines(), []
        for line in lines:  # the grader wraps long lines with a 6-space indent
            if line.startswith(CONT) and joined and not line.strip().startswith("hint:"):
                joined[-1] += " " + line.strip()
            else:
                joined.append(line)
        gid = meta.get("grade_id")
        for line in joined:
            m = CASE.match(line)
            if m:
                body = m.group(2)
                hidden = body.startswith("(hidden) ")
                body = body[len("(hidden) "):] if hidden else body
                what = body.split(": ", 1)[0] if m.group(1) == "FAIL" else body
                cases.setdefault(gid, []).append((m.group(1) == "PASS", what.strip(), hidden))
            elif line.strip().startswith("hint:"):
                hints.setdefault(gid, []).append(line.strip())
    return cases, hints


def hint_label(hint):
    """A short name for a hint: the grader's own named hints, else its first words."""
    try:
        from bngrade import verdict
        named = [("CS231n momentum", "HINT_MOMENTUM"), ("biased running variance", "HINT_BIASED"),
                 ("'eval' mode raises", "HINT_EVAL_RAISED"), ("'eval' treated as training", "HINT_EVAL_AS_TRAIN"),
                 ("wrong shape", "HINT_SHAPE"), ("running stats not stored", "HINT_NOT_STORED"),
                 ("uses the reference", "HINT_REFERENCE")]
        for label, name in named:
            const = getattr(verdict, name, None)
            if const and hint[:40] == const.split("{")[0][:40]:
                return label
    except ImportError:
        pass
    words = hint[len("hint:"):].strip()
    return words[:70] + ("..." if len(words) > 70 else "")


def solution_code(notebook):
    """The code of a notebook's solution cells (nbgrader metadata), joined; '' when unreadable."""
    try:
        nb = json.loads(Path(notebook).read_text())
        cells = nb.get("cells", [])
    except (OSError, ValueError, AttributeError):
        return ""
    parts = []
    for c in cells if isinstance(cells, list) else []:
        meta = c.get("metadata", {}).get("nbgrader", {}) if isinstance(c, dict) else {}
        if c.get("cell_type") == "code" and meta.get("solution"):
            src = c.get("source", "")
            parts.append("".join(src) if isinstance(src, list) else str(src))
    return "\n\n".join(parts)


def near_copies(codes, template, k=25, win=1, top=10):
    """[(similarity, a, b, slices_a, slices_b)], most similar first: copydetect on the solution cells,
    the template's own tokens (the released notebook) ignored."""
    import numpy as np
    from copydetect import CodeFingerprint, compare_files

    with tempfile.TemporaryDirectory(prefix="bngrade-report-") as tmp:
        def write(name, text):
            path = Path(tmp) / f"{len(list(Path(tmp).iterdir()))}.py"
            path.write_text(text)
            return str(path)
        boiler = np.unique(np.array(list(CodeFingerprint(write("template", template), k, win,
                                                          language="python").hashes)))\
            if template.strip() else np.array([], dtype=np.int64)
        prints = {}
        for s, code in codes.items():
            if code.strip():
                try:
                    prints[s] = (CodeFingerprint(write(s, code), k, win, boilerplate=boiler, language="python"), code)
                except Exception:  # copydetect cannot read it (too short, not python): not compared
                    continue
    names = sorted(prints)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            overlap, (sa, sb), (la, lb) = compare_files(prints[a][0], prints[b][0])
            pairs.append((round(float(min(sa, sb) + max(sa, sb)) / 2, 4), a, b, la, lb))
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    return pairs[:top], {s: p[1] for s, p in prints.items()}


def _png(fig):
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _marked(code, slices):
    """The code, escaped, with the copied slices in <mark>."""
    out, at = [], 0
    spans = sorted(zip(slices[0], slices[1])) if len(slices) == 2 else []
    for start, end in spans:
        start, end = max(int(start), at), int(end)
        if end <= start:
            continue
        out.append(html.escape(code[at:start]))
        out.append("<mark>" + html.escape(code[start:end]) + "</mark>")
        at = end
    out.append(html.escape(code[at:]))
    return "".join(out)


def collect(course, assignment):
    """Everything the page shows, as plain data (the test reads it too)."""
    from bngrade.autograde import gradebook_scores

    course = Path(course)
    scores = gradebook_scores(course, assignment)
    totals = {s: sum(v[0] for v in row.values() if v[0] is not None) for s, row in scores.items()}
    top = max((sum(v[1] for v in row.values() if v[0] is not None) for row in scores.values()), default=0)
    cases = defaultdict(lambda: [0, 0, None, None])  # (test, i) -> [passed, seen, description, hidden]
    tests = defaultdict(lambda: [0, 0])  # test -> [full marks, students]
    for s, row in scores.items():
        for t, (got, most) in row.items():
            if got is not None:
                tests[t][0] += got == most
                tests[t][1] += 1
    hints = defaultdict(set)
    for s in scores:
        for nb in sorted((course / "autograded" / s / assignment).glob("*.ipynb")):
            try:
                by_test, hint_lines = verdicts(nb)
            except (OSError, ValueError):
                continue
            for t, rows in by_test.items():
                for i, (ok, what, hidden) in enumerate(rows):
                    c = cases[(t, i)]
                    c[0] += ok
                    c[1] += 1
                    c[2], c[3] = c[2] or what, hidden if c[3] is None else c[3]
            for t, lines in hint_lines.items():
                for h in lines:
                    hints[(t, hint_label(h))].add(s)
    integrity = []
    for s in sorted(scores):
        text = ""
        for path in sorted((course / "reports" / assignment / s).glob("*.txt")):
            body = path.read_text(errors="replace")
            if not body.rstrip().endswith("nothing to report"):
                text += body
        if text.strip():
            integrity.append((len([line for line in text.splitlines()[1:] if line.strip()]), s, text))
    integrity.sort(key=lambda x: (-x[0], x[1]))
    codes = {}
    for s in scores:
        nbs = sorted((course / "submitted" / s / assignment).glob("*.ipynb"))
        codes[s] = "\n\n".join(solution_code(nb) for nb in nbs)
    template = "\n\n".join(solution_code(nb) for nb in sorted((course / "release" / assignment).glob("*.ipynb")))
    pairs, code_of = near_copies(codes, template)
    return dict(scores=scores, totals=totals, top=top, tests=dict(tests),
                cases={k: v for k, v in sorted(cases.items())}, hints=dict(hints), integrity=integrity,
                pairs=pairs, code=code_of, n=len(scores))


def render(assignment, data):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e = html.escape
    n = max(data["n"], 1)
    totals = sorted(data["totals"].values())
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.hist(totals, bins=max(5, min(30, int(data["top"] * 2) + 1)), color="#3b6ea5", edgecolor="white")
    ax.set_xlabel(f"score (of {data['top']:g})")
    ax.set_ylabel("students")
    ax.set_title(f"{assignment}: score distribution, {data['n']} students")
    dist = _png(fig)
    rows = list(data["cases"].items())
    fig, ax = plt.subplots(figsize=(7, 0.28 * max(len(rows), 3) + 0.8))
    ax.barh(range(len(rows)), [v[0] / max(v[1], 1) * 100 for _, v in rows],
            color=["#a0522d" if v[3] else "#3b6ea5" for _, v in rows])
    ax.set_yticks(range(len(rows)), [f"{t} #{i + 1}" for (t, i), _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of students passing (brown: hidden case)")
    rates = _png(fig)

    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
           "style-src 'unsafe-inline'\">",
           f"<title>Class report: {e(assignment)}</title><style>"
           "body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
           "text-align:left;vertical-align:top}td.n{text-align:right}pre{white-space:pre-wrap;font-size:12px;"
           "margin:0}mark{background:#ffe08a}.pair{display:grid;grid-template-columns:1fr 1fr;gap:8px}"
           ".pair pre{border:1px solid #ddd;padding:6px;max-height:420px;overflow:auto}</style></head><body>",
           f"<h1>Class report: {e(assignment)}</h1>",
           f"<p>{data['n']} students graded. Median score {statistics.median(totals) if totals else 0:g} "
           f"of {data['top']:g}.</p>",
           f"<h2 id='distribution'>Score distribution</h2><img alt='score distribution' src='{dist}'>",
           "<h2 id='tests'>Tests</h2><table id='test-table'><tr><th>test</th><th>full marks</th>"
           "<th>students</th><th>%</th></tr>"]
    for t, (full, seen) in sorted(data["tests"].items()):
        out.append(f"<tr><td>{e(t)}</td><td class='n'>{full}</td><td class='n'>{seen}</td>"
                   f"<td class='n'>{100 * full / max(seen, 1):.0f}</td></tr>")
    out.append("</table><h2 id='cases'>Every case (visible and hidden)</h2>"
               f"<img alt='pass rate of every case' src='{rates}'><table id='case-table'><tr><th>test</th>"
               "<th>#</th><th>visibility</th><th>case (mode and parameters)</th><th>passed</th><th>of</th>"
               "<th>%</th></tr>")
    for (t, i), (ok, seen, what, hidden) in rows:
        out.append(f"<tr><td>{e(t)}</td><td class='n'>{i + 1}</td><td>{'hidden' if hidden else 'visible'}</td>"
                   f"<td>{e(what or '')}</td><td class='n'>{ok}</td><td class='n'>{seen}</td>"
                   f"<td class='n'>{100 * ok / max(seen, 1):.0f}</td></tr>")
    out.append("</table><h2 id='mistakes'>Most common mistakes (the grader's hints)</h2>"
               "<table id='mistake-table'><tr><th>mistake</th><th>test</th><th>% of the class</th>"
               "<th>students</th></tr>")
    for (t, label), who in sorted(data["hints"].items(), key=lambda kv: (-len(kv[1]), kv[0])):
        out.append(f"<tr><td>{e(label)}</td><td>{e(t)}</td><td class='n'>{100 * len(who) / n:.0f}%</td>"
                   f"<td>{e(', '.join(sorted(who)))}</td></tr>")
    if not data["hints"]:
        out.append("<tr><td colspan='4'>no hints were given</td></tr>")
    out.append("</table><h2 id='integrity'>Integrity evidence, ranked</h2><table id='integrity-table'>"
               "<tr><th>student</th><th>lines of evidence</th><th>report</th></tr>")
    for count, s, text in data["integrity"]:
        out.append(f"<tr><td>{e(s)}</td><td class='n'>{count}</td><td><pre>{e(text[:4000])}</pre></td></tr>")
    if not data["integrity"]:
        out.append("<tr><td colspan='3'>no integrity report has anything to say</td></tr>")
    out.append("</table><h2 id='copies'>Near-copies (copydetect, released template ignored)</h2>"
               "<table id='copy-table'><tr><th>rank</th><th>student</th><th>student</th><th>similarity</th></tr>")
    for k, (sim, a, b, _, _) in enumerate(data["pairs"], 1):
        out.append(f"<tr><td class='n'>{k}</td><td>{e(a)}</td><td>{e(b)}</td><td class='n'>{sim:.2f}</td></tr>")
    out.append("</table>")
    for k, (sim, a, b, la, lb) in enumerate(data["pairs"][:3], 1):
        out.append(f"<h3>#{k}: {e(a)} and {e(b)} ({sim:.2f})</h3><div class='pair'>"
                   f"<pre>{_marked(data['code'][a], la)}</pre><pre>{_marked(data['code'][b], lb)}</pre></div>")
    out.append("<h2 id='students'>Students</h2><table id='student-table'><tr><th>student</th><th>score</th></tr>")
    for s in sorted(data["totals"]):
        out.append(f"<tr><td>{e(s)}</td><td class='n'>{data['totals'][s]:g}</td></tr>")
    out.append("</table></body></html>")
    return "\n".join(out)


def report(course, assignment, out=None):
    out = Path(out) if out else Path("reports") / assignment / "index.html"
    data = collect(course, assignment)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(assignment, data), encoding="utf-8")
    return out, data


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bngrade.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("assignment")
    p.add_argument("--course", default="assignments")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    path, data = report(args.course, args.assignment, args.out or None)
    print(f"{path}: {data['n']} students, {len(data['cases'])} cases, {len(data['pairs'])} pairs shown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
