"""The instructor's grades as a CSV download, from the browser: GET <server>/bnkit/grades.csv.

nbgrader's formgrader has no export button (`nbgrader export` is a shell
command). This server extension, enabled only in the instructor's server
(hub/hub.py's instructor role), runs nbgrader's own CSV export plugin on the
course gradebook and sends the file. It reads the gradebook; it writes nothing
in the course directory.
"""
import os
import tempfile

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import web


class GradesCsvHandler(JupyterHandler):
    @web.authenticated
    def get(self):
        from nbgrader.api import Gradebook
        from nbgrader.apps import NbGrader
        from nbgrader.coursedir import CourseDirectory
        from nbgrader.plugins import CsvExportPlugin

        app = NbGrader()  # the same config the formgrader loads (the instructor role's nbgrader_config.py)
        app.load_config_file()
        coursedir = CourseDirectory(config=app.config)
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "grades.csv")
            plugin = CsvExportPlugin(config=app.config, to=out)
            with Gradebook(coursedir.db_url, coursedir.course_id) as gb:  # as `nbgrader export` opens it
                plugin.export(gb)
            with open(out, "rb") as f:
                data = f.read()
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", 'attachment; filename="grades.csv"')
        self.finish(data)


def _jupyter_server_extension_points():
    return [{"module": "bnkit_hub_grades"}]


def _load_jupyter_server_extension(server_app):
    web_app = server_app.web_app
    route = url_path_join(web_app.settings["base_url"], "bnkit/grades.csv")
    web_app.add_handlers(".*$", [(route, GradesCsvHandler)])
