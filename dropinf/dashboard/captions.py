"""HTML captions and cards of the pages, every name from data escaped.

Class, folder, file and run names come from data or files; each is passed through
``html.escape`` here before it reaches the page's HTML.
"""

from __future__ import annotations

import html
from collections.abc import Sequence


def caption_html(lines: Sequence[str]) -> str:
    """A compact multi-line caption for a thumbnail.

    Args:
        lines: Lines of markup, already escaped (built by the functions below).

    Returns:
        The caption's HTML.
    """
    return '<div class="dropinf-caption">' + "<br>".join(lines) + "</div>"


def score_html(score: float) -> str:
    """A signed score coloured as proponent (+) or opponent (-)."""
    css = "score-pos" if score >= 0 else "score-neg"
    return f'<span class="{css}">{score:+.3g}</span>'


def train_caption_html(
    index: int, given: str, predicted: str, suspect: bool, score: float | None = None
) -> str:
    """Caption of a training thumbnail: index, suspect flag, score, given and predicted class.

    Args:
        index: The training index.
        given: The given class name (from the data; escaped here).
        predicted: The predicted class name (escaped here).
        suspect: Whether to show the suspect-label flag.
        score: The influence score to show, or None.

    Returns:
        The caption's HTML.
    """
    flag = ' <span class="flag" title="suspect label">⚑</span>' if suspect else ""
    scored = f" · {score_html(score)}" if score is not None else ""
    return caption_html(
        [
            f"#{int(index)}{flag}{scored}",
            f"given <b>{html.escape(given)}</b>"
            f' <span class="muted">pred {html.escape(predicted)}</span>',
        ]
    )


def test_caption_html(index: int, true: str, predicted: str, score: float) -> str:
    """Caption of a test thumbnail with the score a training example has on it.

    Args:
        index: The test index.
        true: The true class name (from the data; escaped here).
        predicted: The predicted class name (escaped here).
        score: The training example's influence on this test example.

    Returns:
        The caption's HTML.
    """
    return caption_html(
        [
            f"test #{int(index)} · {score_html(score)}",
            f"true <b>{html.escape(true)}</b>"
            f' <span class="muted">pred {html.escape(predicted)}</span>',
        ]
    )


def sidebar_card_html(model: str, dataset: str, run: str) -> str:
    """The sidebar card naming the current model, dataset and run (each escaped).

    Args:
        model: The model's name (a file name).
        dataset: The dataset spec (may hold a path).
        run: The run key.

    Returns:
        The card's HTML.
    """
    model, dataset, run = (html.escape(text) for text in (model, dataset, run))
    return (
        '<div class="dropinf-sidebar-card">'
        f"<b>Model</b><br>{model}<br><b>Dataset</b><br>{dataset}<br><b>Run</b><br>{run}</div>"
    )
