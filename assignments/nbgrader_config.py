"""nbgrader configuration of the bnkit course. Run nbgrader from this directory.

See README.md here for the instructor workflow.
"""
import io
import re
import tokenize

from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, ClearHiddenTests, Execute,
                                    GetGrades, IgnorePattern, LimitOutput, SaveAutoGrades)
from nbgrader.preprocessors.base import NbGraderPreprocessor
from nbformat.v4 import new_output

c = get_config()  # noqa: F821 (provided by traitlets when this file is loaded)

c.CourseDirectory.course_id = "bnkit"
c.CourseDirectory.root = "."

# Each notebook runs in seconds; a stuck or very slow cell is interrupted,
# records CellTimeoutError and grading moves on to the next student.
c.ExecutePreprocessor.timeout = 60
c.Execute.timeout = 60

# A deleted or retyped test cell comes back from the source (by grade id and checksum).
c.OverwriteCells.add_missing_cells = True


def _without_comments(source):
    """The code of a cell without its comments (a comment may say anything)."""
    try:
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        return tokenize.untokenize((t.type, t.string) for t in tokens if t.type != tokenize.COMMENT)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return source


class FlagTampering(NbGraderPreprocessor):
    """Zero every autograded test of a submission whose own code reaches for
    the grader's machinery (the grading module, the import blocker, IPython's
    error display, the profiler, sys.modules, stack frames) or starts other
    processes (which could run the reference out of the blocker's reach).

    Student code shares the kernel with the tests (bnkit.grading's docstring
    explains the rest of the defence); this closes the shortcuts that need
    no effort to find. Runs after Execute, before SaveAutoGrades reads the
    errors.
    """

    PATTERN = re.compile(
        r"bnkit\s*\.\s*grading|from\s+bnkit\s+import\s+grading|_BlockReferences|lockdown|"
        r"set_custom_exc|showtraceback|_showtraceback|setprofile|settrace|meta_path|sys\.modules|"
        r"NBGRADER|\bgc\b\s*\.\s*get_(objects|referrers|referents)|__code__|importlib|__import__|builtins|"
        r"_getframe|\bf_(back|locals|globals)\b|tb_frame|\binspect\b|"
        r"subprocess|multiprocessing|\bos\s*\.\s*(system|popen|fork|exec|spawn)")

    def preprocess(self, nb, resources):
        hits = set()
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader", {})
            if cell.cell_type == "code" and not meta.get("locked", False):
                hits.update(m.group(0) for m in self.PATTERN.finditer(_without_comments(cell.source)))
        if hits:
            message = ("the submission's own code uses " + ", ".join(sorted(hits)) +
                       ", which only the grader may touch; every autograded test scores zero. "
                       "Ask your instructor if this is a mistake.")
            self.log.warning("Integrity: %s", message)
            for cell in nb.cells:
                meta = cell.metadata.get("nbgrader", {})
                if cell.cell_type == "code" and meta.get("grade") and not meta.get("solution"):
                    cell.outputs.append(new_output("error", ename="IntegrityError", evalue=message, traceback=[
                        "IntegrityError: " + message]))
        return nb, resources


c.Autograde.autograde_preprocessors = [
    Execute, FlagTampering, IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
    SaveAutoGrades, AssignLatePenalties, CheckCellMetadata,
]

class ScrubHiddenTestsFromOutputs(NbGraderPreprocessor):
    """Remove every line that quotes a hidden test from a cell's outputs.

    A failing test's traceback shows the lines around the one that raised,
    hidden ones included; ClearHiddenTests only cleans the source.
    """

    ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
    REGION = re.compile(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS", re.S)

    def _scrub(self, text, hidden):
        lines = text.split("\n")
        return "\n".join(line for line in lines if not any(h in self.ANSI.sub("", line) for h in hidden))

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        hidden = [line.strip() for region in self.REGION.findall(cell.source)
                  for line in region.split("\n") if len(line.strip()) >= 6]
        if not hidden:
            return cell, resources
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                out.traceback = [self._scrub(t, hidden) for t in out.traceback]
                out.evalue = self._scrub(out.evalue, hidden)
            elif out.output_type == "stream":
                out.text = self._scrub(out.text, hidden)
            elif "data" in out:
                for mime, value in out.data.items():
                    if isinstance(value, str):
                        out.data[mime] = self._scrub(value, hidden)
        return cell, resources


# Feedback: the autograded notebooks hold the hidden tests; take them out of
# the outputs (tracebacks quote them) and of the source before rendering
# (nbgrader's default keeps them).
c.GenerateFeedback.preprocessors = [GetGrades, ScrubHiddenTestsFromOutputs, ClearHiddenTests,
                                    CSSHTMLHeaderPreprocessor]
