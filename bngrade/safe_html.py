"""Student HTML made inert wherever a person reads it: feedback pages and the formgrader.

What a student controls reaches HTML through nbconvert's templates: the
markdown of their cells (raw HTML passes through markdown, attachments
become data: images) and their outputs (text/html, text/markdown,
image/svg+xml, application/javascript). The policy, in one place:

- `sanitize(html)` keeps only inert markup (nh3, the Ammonia sanitizer):
  no script, style, iframe, object, embed, form or input elements, no event
  handler, `style`, `id` or `name` attribute (ids could clobber the page's own
  script globals), only the classes nbconvert and Pygments write (no page
  class that positions or hides), links only to http(s), mailto and in-page
  anchors, images only from `data:image/...` (no external load, no tracking
  pixel).
- The course config (assignments/nbgrader_config.py) routes every student
  string through it, for nbgrader's feedback *and* the formgrader, which both
  use nbconvert's HTMLExporter with the course's config:
  `markdown2html` (markdown cells, instructor comments) is replaced by
  `markdown2html` here, `clean_html` by `clean_html` here, and
  `HTMLExporter.sanitize_html = True` makes nbconvert's templates pass
  text/html, text/markdown and SVG outputs through `clean_html` and drop
  JavaScript and widget outputs. An SVG output becomes an `<img>` of a data
  URI, where a browser runs no script.
- Feedback pages are one self-contained file under a Content-Security-Policy
  (`bngrade.feedback`).
"""
import base64
import re

import nh3
from jinja2 import pass_context
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

TAGS = (set(nh3.ALLOWED_TAGS) | {"div", "span", "pre", "code", "table", "thead", "tbody", "tr", "th", "td", "img",
                                 "figure", "figcaption", "sub", "sup"}) - {"map", "area"}
ATTRIBUTES = {"*": {"class", "title", "lang", "dir"}, "a": {"href"}, "img": {"src", "alt", "width", "height"},
              "td": {"colspan", "rowspan", "align"}, "th": {"colspan", "rowspan", "align"}}
IMAGE_DATA = re.compile(r"data:image/(png|jpeg|gif|webp|svg\+xml)[;,]", re.I)
# The classes nbconvert's markdown and Pygments write; any other class would borrow the page's own CSS (the
# formgrader's Bootstrap `affix` is `position: fixed`: a student's link laid over the grading page).
OWN_CLASSES = re.compile(r"[a-z][a-z0-9]{0,2}|highlight|anchor-link|task-list-item|language-[\w+#-]+")


def _attribute(tag, attr, value):
    """nh3's attribute filter: external loads and non-anchor links go."""
    if attr == "src":
        return value if IMAGE_DATA.match(value.strip()) else None
    if attr == "class":
        return " ".join(c for c in value.split() if OWN_CLASSES.fullmatch(c)) or None
    if attr == "href":
        v = value.strip().lower()
        return value if v.startswith(("http://", "https://", "mailto:", "#")) else None
    return value


def sanitize(html):
    """Inert HTML: the module docstring's policy."""
    if isinstance(html, bytes):
        html = html.decode("utf-8", "replace")
    return nh3.clean(str(html), tags=TAGS, attributes=ATTRIBUTES, attribute_filter=_attribute,
                     url_schemes={"http", "https", "mailto", "data"}, strip_comments=True,
                     link_rel="noopener noreferrer nofollow",
                     clean_content_tags={"script", "style", "iframe", "object", "embed", "noscript", "template",
                                         "textarea", "select", "svg", "math"})


def clean_html(element):
    """nbconvert's `clean_html` filter, with nh3. An SVG document becomes an inert `<img>` of itself."""
    text = element.decode("utf-8", "replace") if isinstance(element, bytes) else str(element)
    head = text.lstrip()[:200].lower()
    if head.startswith("<svg") or (head.startswith("<?xml") and "<svg" in text[:2000].lower()):
        data = base64.b64encode(text.encode("utf-8")).decode("ascii")
        return f'<img src="data:image/svg+xml;base64,{data}" alt="SVG output">'
    return sanitize(text)


@pass_context
def markdown2html(context, source):
    """nbconvert's markdown filter (attachments included), its HTML sanitised."""
    cell = context.get("cell", {})
    attachments = cell.get("attachments", {}) if hasattr(cell, "get") else {}
    renderer = IPythonRenderer(escape=False, attachments=attachments, embed_images=False, path="",
                               anchor_link_text="¶", exclude_anchor_links=False)
    return sanitize(MarkdownWithMath(renderer=renderer).render(source))
