"""The executor of the merge run (`bngrade.autograde`): a notebook graded elsewhere, replayed.

Its own module so that `bngrade.autograde` (and `python -m bngrade unit`, an
array task grading one student) does not import nbgrader just to parse its
command line: nbgrader's imports cost ~3-4 s of CPU.
"""
import json
from pathlib import Path

from nbgrader.preprocessors.base import NbGraderPreprocessor
from traitlets import Unicode


class ReplayGraded(NbGraderPreprocessor):
    """The executor of the merge run: the notebook graded in the scratch copy, in place of executing it.

    It was sanitized, executed in the sandbox and scored by the same config, so
    SaveAutoGrades, which runs after this, stores what a serial run stores.
    """

    results_dir = Unicode("", help="the --out directory of `one`").tag(config=True)

    def preprocess(self, nb, resources):
        import nbformat

        meta = resources["nbgrader"]
        base = Path(self.results_dir) / meta["student"] / meta["assignment"]
        result = base / "result.json"
        if not result.exists():
            raise RuntimeError(f"no graded result for {meta['student']} in {base} (did `one` run?)")
        info = json.loads(result.read_text())
        path = base / "autograded" / f"{meta['notebook']}.ipynb"
        if not info.get("ok") or not path.exists():
            log = base / "nbgrader.log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise RuntimeError(f"grading {meta['student']} failed in its scratch course:\n{tail}")
        graded = nbformat.read(str(path), as_version=nbformat.NO_CONVERT)
        return graded, resources
