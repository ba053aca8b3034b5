"""The Jinja2 environment every report page renders from (`templates/`): model text and names are escaped,
and a name the template uses but the page does not pass is an error, not an empty cell."""

from __future__ import annotations

import jinja2

PAGES = jinja2.Environment(loader=jinja2.PackageLoader("rlaif.report", "templates"),
                           autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined)
