"""The writer's retry backoff grows and is capped."""

from __future__ import annotations

from app.writer.writer import backoff_seconds


def test_backoff_grows_and_is_capped() -> None:
    assert 0.05 <= backoff_seconds(0, 100, 5000) <= 0.1
    assert 0.4 <= backoff_seconds(3, 100, 5000) <= 0.8
    assert 2.5 <= backoff_seconds(30, 100, 5000) <= 5.0
