"""The HTML page ``dvc plots show`` fills, with Vega inlined so it renders offline.

DVC's default page loads Vega, Vega-Lite and vega-embed from a CDN, so on a
machine without network it shows nothing. This page carries the three
libraries inline instead — the bundle that ``vl-convert-python`` (a PyPI wheel)
ships for offline use, Vega-Lite pinned to the v5 line DVC's specs are written
for — and ``.dvc/config`` names it as ``plots.html_template``, so a plain
``dvc plots show`` writes ``dvc_plots/index.html`` that renders with no network.
It also makes vega-embed draw SVG and mark each plot's ``<div>`` with
``data-rendered="ok"`` (or the error), marks each image plot's ``<img>`` with
``data-loaded="ok"`` (or ``"error"``) once the page has loaded, and counts
uncaught script errors in ``<html data-script-errors>``, which lets a headless
browser check the page (``tests/test_plots_page.py``).
"""

from __future__ import annotations

#: The Vega-Lite line of DVC's templates (their ``$schema`` is vega-lite/v5).
VEGA_LITE_VERSION = "5.21"
# Placeholders DVC replaces anywhere in the page; the inlined code must not contain them.
_DVC_PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

# Wraps vegaEmbed: SVG output, and a data-rendered attribute once the plot is drawn (or failed).
_SNIPPET = """
window.vega = vega;
window.vegaLite = vegaLite;
window.vegaEmbed = function (el, spec, options) {
  var target = typeof el === "string" ? document.querySelector(el) : el;
  return vegaEmbed(el, spec, Object.assign({renderer: "svg"}, options || {}))
    .then(function (result) { target.setAttribute("data-rendered", "ok"); return result; })
    .catch(function (error) {
      target.setAttribute("data-rendered", "error: " + error);
      console.error(error);
    });
};
window.addEventListener("error", function (event) {
  var root = document.documentElement;
  var count = Number(root.getAttribute("data-script-errors") || 0) + 1;
  root.setAttribute("data-script-errors", String(count));
  root.setAttribute("data-last-script-error", String(event.message));
});
window.addEventListener("load", function () {
  document.querySelectorAll("img").forEach(function (img) {
    img.setAttribute("data-loaded", img.complete && img.naturalWidth > 0 ? "ok" : "error");
  });
});
"""

_PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>shoulders: DVC plots</title>
    <!-- Vega {vega}, Vega-Lite {vega_lite}, vega-embed {vega_embed}, bundled by vl-convert-python {vlc}. -->
    <script type="text/javascript">
(function () {
{bundle}
})();
    </script>
    <style>
        body { font-family: sans-serif; max-width: 1400px; }
        body > div { margin: 1.5em 0; }
        img { max-width: 100%; height: auto; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def page_template() -> str:
    """The offline page template (about 1 MB: the bundled libraries).

    Raises
    ------
    ValueError
        If the bundle happens to contain one of DVC's placeholders or a closing
        script tag (it would be mangled or end the script early).
    """
    from importlib import metadata

    import vl_convert

    bundle = vl_convert.javascript_bundle(snippet=_SNIPPET, vl_version=VEGA_LITE_VERSION)
    for forbidden in (*_DVC_PLACEHOLDERS, "</script"):
        if forbidden in bundle:
            raise ValueError(f"the vl-convert bundle contains {forbidden!r}; it cannot be inlined as is")
    fills = {
        "{vega}": vl_convert.get_vega_version(),
        "{vega_lite}": VEGA_LITE_VERSION,
        "{vega_embed}": vl_convert.get_vega_embed_version(),
        "{vlc}": metadata.version("vl-convert-python"),
    }
    page = _PAGE
    for placeholder, value in fills.items():
        page = page.replace(placeholder, value)
    return page.replace("{bundle}", bundle)
