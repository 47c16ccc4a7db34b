"""The page's "Upstream rate" row: shown only when the upstream's 429s taught a rate."""

from __future__ import annotations

import dataclasses

import pytest

from tests.ops.test_pages import FRESH, card, page_of


@pytest.mark.parametrize(
    ("learned", "expected"),
    [
        (None, None),
        (7.0, "<dt>Upstream rate</dt><dd>learned: 7.0/s</dd>"),
        (9.449996, "<dt>Upstream rate</dt><dd>learned: 9.4/s</dd>"),
        (0.5, "<dt>Upstream rate</dt><dd>learned: 0.5/s</dd>"),
    ],
)
def test_the_learned_rate_is_a_row_of_the_card(learned: float | None,
                                                expected: str | None) -> None:
    plain = card(FRESH)
    shown = dataclasses.replace(plain, report=dataclasses.replace(plain.report,
                                                                   learned_rate=learned))
    page = page_of(shown)
    if expected is None:
        assert "Upstream rate" not in page
    else:
        assert expected in page
