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


def example_name_html(name: str | None) -> list[str]:
    """The caption line naming an example (its file path or .npz id), escaped; none for None."""
    if name is None:
        return []
    escaped = html.escape(name)
    return [f'<span class="muted example-name" title="{escaped}">{escaped}</span>']


def train_caption_html(
    index: int,
    given: str,
    predicted: str,
    suspect: bool,
    score: float | None = None,
    name: str | None = None,
) -> str:
    """Caption of a training thumbnail: index, suspect flag, score, classes and the example's name.

    Args:
        index: The training index.
        given: The given class name (from the data; escaped here).
        predicted: The predicted class name (escaped here).
        suspect: Whether to show the suspect-label flag.
        score: The influence score to show, or None.
        name: The example's name from the data (relative file path, .npz id; escaped here), or
            None when the data names none.

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
            *example_name_html(name),
        ]
    )


def test_caption_html(
    index: int, true: str, predicted: str, score: float, name: str | None = None
) -> str:
    """Caption of a test thumbnail with the score a training example has on it.

    Args:
        index: The test index.
        true: The true class name (from the data; escaped here).
        predicted: The predicted class name (escaped here).
        score: The training example's influence on this test example.
        name: The example's name from the data (escaped here), or None.

    Returns:
        The caption's HTML.
    """
    return caption_html(
        [
            f"test #{int(index)} · {score_html(score)}",
            f"true <b>{html.escape(true)}</b>"
            f' <span class="muted">pred {html.escape(predicted)}</span>',
            *example_name_html(name),
        ]
    )


def influence_sections(true: str, predicted: str) -> list[tuple[str, float]]:
    """The gallery headings of one example's influences, worded for its case.

    Scores are the influence on the example's loss at its true (or chosen) label: + means
    up-weighting the training example lowers that loss. For a correct prediction the positive
    ones supported it; for a wrong one the negative ones raised the true class's loss (they
    pushed toward the predicted class) and the positive ones supported the true class.

    Args:
        true: The true class name (escaped here).
        predicted: The predicted class name (escaped here).

    Returns:
        ``(heading HTML, sign)`` per gallery, in display order; sign +1 takes the most positive
        scores, -1 the most negative.
    """
    true, predicted = html.escape(true), html.escape(predicted)
    if true == predicted:
        sections = [
            (f"Proponents (supported this prediction, {true})",
             "up-weighting them lowers this example's loss", 1.0),
            (f"Opponents (pushed against {true})",
             "up-weighting them raises this example's loss", -1.0),
        ]  # fmt: skip
    else:
        sections = [
            (f"Pushed toward the predicted class {predicted}",
             f"they raise the loss of the true class {true}: likely causes of the mistake", -1.0),
            (f"Supported the true class {true}",
             f"they lower the loss of the true class {true}, against the prediction", 1.0),
        ]  # fmt: skip
    return [
        (f'<div class="dropinf-section"><b>{title}</b> <span class="muted">· {why}</span></div>',
         sign)
        for title, why, sign in sections
    ]  # fmt: skip


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
