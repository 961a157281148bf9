"""The book's Sphinx extension (book/_ext/sslct_book.py): scripts once, short cells on one line."""

import importlib.util
from types import SimpleNamespace

from ssl_lib.paths import REPO

spec = importlib.util.spec_from_file_location("sslct_book", REPO / "book" / "_ext" / "sslct_book.py")
ext = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ext)


def test_short_cells_keep_one_line_long_ones_wrap():
    body = ('<table><tr><th colspan="2">COVID-19</th><td>0.737 ± 0.033</td>'
            f'<td>{"a long sentence that explains a metric " * 2}</td><td style="color:red">x</td></tr></table>')
    out = ext.nowrap_short_cells(body)
    assert '<th colspan="2" style="white-space:nowrap">COVID-19</th>' in out
    assert '<td style="white-space:nowrap">0.737 ± 0.033</td>' in out
    assert out.count("nowrap") == 2  # not the long cell, not the one with its own style


def test_each_script_once_and_a_theme_mode():
    class JS:
        def __init__(self, filename, **attributes):
            self.filename, self.attributes = filename, attributes

    thebe = 'const THEBE_JS_URL = "x";'
    scripts = [JS("_static/a.js"), JS("", body=thebe), JS("_static/b.js", **{"async": "async"}), JS(None, body=thebe),
               JS("_static/a.js")]
    context = {"script_files": scripts, "body": "<p>text</p>"}
    app = SimpleNamespace(config=SimpleNamespace(html_theme_options={}))
    ext._page(app, "p", "page.html", context, None)
    assert [(s.filename, s.attributes.get("body")) for s in context["script_files"]] == [
        ("_static/a.js", None), ("", thebe), ("_static/b.js", None)]
    assert context["default_mode"] == "light"
