"""Names from data and files reach HTML (st.html, plotly text) only escaped."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest

from dropinf import dashboard as views

HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "<b>bold</b>",
    '"><script>alert(1)</script>',
    "<a href='http://example.com'>x</a>",
    "Tom & Jerry",
]
TAG = re.compile(r"<(img|script|a|b)\b[^>]*>", re.IGNORECASE)


def tags(markup: str) -> list[str]:
    """The element tags in a piece of markup, by name."""
    return re.findall(r"<\s*([a-zA-Z]+)", markup)


@pytest.mark.parametrize("name", HOSTILE)
def test_train_caption_escapes_class_names(name: str):
    markup = views.train_caption_html(7, name, name, suspect=True, score=0.5)
    assert html.escape(name) in markup
    assert set(tags(markup)) <= {"div", "br", "span", "b"}
    assert not TAG.search(markup.replace("<b>", "").replace("</b>", "")), markup


@pytest.mark.parametrize("name", HOSTILE)
def test_test_caption_escapes_class_names(name: str):
    markup = views.test_caption_html(3, name, name, score=-0.25)
    assert html.escape(name) in markup
    assert not TAG.search(markup.replace("<b>", "").replace("</b>", "")), markup


@pytest.mark.parametrize("name", HOSTILE)
def test_sidebar_card_escapes_model_dataset_and_run(name: str):
    markup = views.sidebar_card_html(name, f"/data/{name}:noise=0.1", name)
    assert markup.count(html.escape(name)) == 3
    assert not TAG.search(markup.replace("<b>", "").replace("</b>", "")), markup


def test_captions_keep_their_own_markup():
    markup = views.train_caption_html(7, "cat", "dog", suspect=True, score=0.5)
    assert 'class="flag"' in markup and 'class="score-pos"' in markup and "<b>cat</b>" in markup
    assert 'class="score-neg"' in views.test_caption_html(3, "cat", "cat", score=-1.0)


@pytest.mark.parametrize("name", HOSTILE)
def test_plotly_text_from_class_names_is_escaped(name: str):
    labels = np.array([0, 1, 0, 1])
    figure = views.influence_histogram(
        np.array([0.1, -0.2, 0.3, 0.0]), labels, [name, "ok"], color_by_class=True
    )
    texts = [trace.name for trace in figure.data] + [t.hovertemplate for t in figure.data]
    assert not any(TAG.search(text or "") for text in texts), texts
    assert html.escape(name) in {trace.name for trace in figure.data}
    coords = np.zeros((4, 2))
    figure = views.gradient_map_figure(
        coords, np.arange(4), labels, "class", category_names=[name, "ok"],
        hover_fields={"given": [name, "ok", name, "ok"]},
    )  # fmt: skip
    texts = [trace.name for trace in figure.data]
    texts += [str(value) for trace in figure.data for value in np.ravel(trace.customdata)]
    assert not any(TAG.search(text or "") for text in texts), texts
