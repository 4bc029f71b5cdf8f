"""dropinf dashboard: the router.

Run with ``streamlit run app.py``. One shared page setup (page config, palette, logo), the sidebar
naming the current model, dataset and run, and ``st.navigation`` over the pages in ``pages/``.
"""

from __future__ import annotations

import streamlit as st

from pages._state import adopt_prepared_demo, sync_run_with_url
from pages._widgets import render_sidebar, setup_page, show_error

PAGES = [
    st.Page("pages/load.py", title="Load", icon=":material/upload:", url_path="load", default=True),
    st.Page("pages/compute.py", title="Compute", icon=":material/bolt:", url_path="compute"),
    st.Page("pages/explore.py", title="Explore", icon=":material/search:", url_path="explore"),
    st.Page(
        "pages/gradient_map.py",
        title="Gradient map",
        icon=":material/scatter_plot:",
        url_path="gradient_map",  # = the file name: deep links work before the router runs
    ),
    st.Page(
        "pages/label_issues.py",
        title="Label issues",
        icon=":material/flag:",
        url_path="label_issues",  # = the file name: deep links work before the router runs
    ),
    st.Page(
        "pages/compare.py",
        title="Compare runs",
        icon=":material/compare_arrows:",
        url_path="compare",
    ),
]


def main() -> None:
    """Set up the page, sync the URL, open on the demo if prepared, run the chosen page."""
    setup_page()
    show_error(sync_run_with_url())
    adopt_prepared_demo()
    page = st.navigation(PAGES)
    render_sidebar()
    page.run()


main()
