"""The bibliography's style: pybtex's plain, sorted by author with braces ignored.

pybtex's plain style sorts by the author's last name as written in the .bib
file, braces included, so an institutional author such as `{{CS231n}}` or
`{{PyTorch contributors}}` sorts as "{cs231n}", after every letter: the
bibliography ends with them, out of order. This style drops the braces from
the sort key (nothing else changes); `_config.yml` selects it with
`bibtex_default_style: bnkit`.
"""
from pybtex.plugin import register_plugin
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.sorting.author_year_title import SortingStyle as AuthorYearTitle


class SortingStyle(AuthorYearTitle):
    def person_key(self, person):
        return super().person_key(person).replace("{", "").replace("}", "")


class Style(PlainStyle):
    default_sorting_style = "bnkit"


def setup(app):
    register_plugin("pybtex.style.sorting", "bnkit", SortingStyle)
    register_plugin("pybtex.style.formatting", "bnkit", Style)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
