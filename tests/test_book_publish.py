"""The book's publishing set-up, checked without building it (fast).

- .github/workflows/book.yml parses, builds with the README's command and
  deploys _build/html to GitHub Pages;
- _config.yml, as Jupyter Book resolves it, keeps the buttons of its html:
  and launch_buttons: blocks (the recursive_update bug);
- the repository's address is written once and every link agrees with it;
- binder/ declares what the chapters import, torch as the pinned CPU build.
test_book_build.py checks the same buttons and downloads in the built HTML.
"""
import ast
import re
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

sys.path.insert(0, str(Path(__file__).parent))
import _book  # noqa: E402

ROOT = _book.ROOT
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"


@pytest.fixture(scope="module")
def workflow():
    return yaml.safe_load(WORKFLOW.read_text())


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def readme_commands():
    """The commands of the README's first shell block (`make book   # ...`)."""
    block = re.search(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def steps(job):
    return job.get("steps", [])


def test_workflow_builds_with_the_readme_command_and_deploys_to_pages(workflow):
    triggers = workflow.get("on", workflow.get(True))  # PyYAML reads a bare `on` as True
    assert "push" in triggers and triggers["push"]["branches"] == ["main"], triggers
    assert workflow["permissions"]["pages"] == "write"
    assert workflow["permissions"]["id-token"] == "write"

    build, deploy = workflow["jobs"]["build"], workflow["jobs"]["deploy"]
    runs = [s["run"].strip() for s in steps(build) if "run" in s]
    assert runs, "the build job runs no command"
    assert "make book" in runs, runs
    assert set(runs) <= set(readme_commands()), f"workflow runs {runs}, README says {readme_commands()}"

    uploads = [s for s in steps(build) if s.get("uses", "").startswith("actions/upload-pages-artifact@")]
    assert len(uploads) == 1, steps(build)
    assert uploads[0]["with"]["path"] == _book.HTML.relative_to(_book.OUT).as_posix() == "_build/html"
    # the upload comes after the build
    assert steps(build).index(uploads[0]) > [s.get("run", "").strip() for s in steps(build)].index("make book")

    assert deploy["needs"] in ("build", ["build"])
    assert deploy["environment"]["name"] == "github-pages"
    assert any(s.get("uses", "").startswith("actions/deploy-pages@") for s in steps(deploy)), steps(deploy)


def test_make_book_is_the_strict_build():
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^book:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    build = next(line for line in recipe.splitlines() if "jupyter-book build" in line)
    for flag in ("-W", "-n", "--keep-going"):
        assert f" {flag}" in build, build


def test_resolved_config_keeps_the_html_and_launch_buttons(config):
    """Without sphinx.recursive_update, sphinx.config.html_theme_options would
    replace what html: and launch_buttons: set; resolve it as Jupyter Book does."""
    from jupyter_book.config import get_final_config

    final, _ = get_final_config(user_yaml=ROOT / "_config.yml", cli_config={"latex_individualpages": False},
                                sourcedir=ROOT)
    theme = final["html_theme_options"]
    for button in ("use_repository_button", "use_issues_button", "use_edit_page_button"):
        assert theme.get(button) is config["html"][button] is True, (button, theme)
    assert theme["launch_buttons"]["binderhub_url"] == config["launch_buttons"]["binderhub_url"]
    assert theme["launch_buttons"]["binderhub_url"].startswith("https://")
    assert theme["repository_url"] == config["repository"]["url"]
    # ...and what sphinx.config.html_theme_options itself sets
    assert theme["use_download_button"] is True
    assert theme["search_bar_text"] == config["sphinx"]["config"]["html_theme_options"]["search_bar_text"]


def test_the_repository_address_is_written_once_and_links_agree(config):
    url = config["repository"]["url"]
    match = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+)", url)
    assert match, url
    owner, repo = match.groups()
    branch = config["repository"]["branch"]
    readme = (ROOT / "README.md").read_text()
    assert url in readme
    assert f"https://{owner}.github.io/{repo}/" in readme  # GitHub Pages' address for the repository
    assert f"https://mybinder.org/v2/gh/{owner}/{repo}/{branch}" in readme
    # no other GitHub repository address anywhere in what we configure
    for path in [ROOT / "README.md", ROOT / "_config.yml", WORKFLOW]:
        others = {u for u in re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", path.read_text()) if u != url}
        assert not others, f"{path.name}: {others}"


def chapter_imports():
    """Top-level modules imported by the code cells of the chapters."""
    modules = set()
    for md in (ROOT / "book").glob("*.md"):
        for cell in re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", md.read_text(), re.S):
            code = "\n".join(line for line in cell.splitlines() if not line.startswith(("%", "!", ":")))
            for node in ast.walk(ast.parse(code)):
                if isinstance(node, ast.Import):
                    modules.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    modules.add(node.module.split(".")[0])
    return modules


def test_binder_declares_what_the_chapters_import():
    from importlib.metadata import packages_distributions

    lines = [line.strip() for line in (ROOT / "binder" / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.strip().startswith("#")]
    options = [line for line in lines if line.startswith("-")]
    requirements = {Requirement(line).name.lower(): Requirement(line) for line in lines if not line.startswith("-")}
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in options, options
    assert "-c ../constraints.txt" in options and (ROOT / "constraints.txt").is_file()
    assert str(requirements["torch"].specifier) == "==2.13.0+cpu"
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()

    imports = chapter_imports()
    assert {"numpy", "bnkit", "torch", "matplotlib"} <= imports, imports
    provided = packages_distributions()
    missing = []
    for module in sorted(imports - set(sys.stdlib_module_names) - {"bnkit"}):
        dists = {d.lower().replace("_", "-") for d in provided.get(module, [module])}
        if not dists & set(requirements):
            missing.append(f"{module} (from {sorted(dists)})")
    assert not missing, f"binder/requirements.txt lacks what the chapters import: {missing}"

    post_build = (ROOT / "binder" / "postBuild").read_text()
    assert "pip install --no-deps -e ." in post_build  # bnkit itself, from the clone
    assert "jupytext-config set-default-viewer" in post_build  # .md chapters open as notebooks
    assert (ROOT / "binder" / "runtime.txt").read_text().strip() == "python-3.11"
