"""bngrade.formgrader_csp's policy, without a browser: which inline scripts of a formgrade page it
allows (the browser tests in test_inert_html.py and test_hub.py load the real page)."""
import base64
import hashlib

from bngrade.formgrader_csp import NOTEBOOK_START, harden_submission_page, template_script_shapes


def sha(text):
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


OWN = ('\nvar submission_id = "abc";\nvar notebook_id = "n";\nvar assignment_id = "a";\n'
       'var base_url = "/u/formgrader";\n')


def page(head_scripts, body):
    scripts = "".join(f'<script type="text/javascript">{s}</script>' for s in head_scripts)
    return (f"<html><head>{scripts}<!-- Load mathjax --><script src=\"https://cdnjs.example/m.js\"> </script>"
            f"<!-- End of mathjax configuration --></head><body><div {NOTEBOOK_START}>{body}</div></body></html>")


def test_only_the_templates_own_scripts_before_the_notebook_are_allowed():
    assert any("var submission_id" in s for s in template_script_shapes())
    evil = "fetch('/x')"
    lookalike = OWN.replace('"/u/formgrader"', '"/u/formgrader" + fetch("/x")')  # not the template's shape
    html, csp = harden_submission_page(page([OWN, evil, lookalike], f"<script>{OWN}</script>"), "/u/mj.js")
    script_src = csp.split("script-src", 1)[1]
    assert sha(OWN) in script_src  # the template's variables, with this page's ids
    assert sha(evil) not in script_src and sha(lookalike) not in script_src
    assert "'unsafe-inline'" not in script_src and "'self'" in script_src
    assert html.count(OWN) == 2  # the copy inside the notebook is allowed only because it is the same text:
    # a script there runs only if its text is exactly one of the template's (it can only redo what they do)
    assert "cdnjs" not in html and '<script src="/u/mj.js"></script>' in html
    for directive in ("object-src 'none'", "frame-src 'none'", "base-uri 'self'", "form-action 'self'",
                      "img-src 'self' data:", "default-src 'self'"):
        assert directive in csp


def test_a_page_without_the_notebook_marker_allows_no_inline_script_of_its_own():
    html, csp = harden_submission_page(f'<html><head><script type="text/javascript">{OWN}</script></head></html>',
                                       None)
    assert sha(OWN) not in csp and "<script src" not in html
