"""Capped, jittered exponential backoff for retrying expected faults."""

from __future__ import annotations

import random


class Backoff:
    """Delays first, first*2, ... up to cap, each with +-jitter, reset after a success."""

    def __init__(self, first: float = 0.5, cap: float = 5.0, jitter: float = 0.2):
        self.first, self.cap, self.jitter = first, cap, jitter
        self.attempt = 0

    def next_delay(self) -> float:
        base = min(self.cap, self.first * 2**self.attempt)
        self.attempt += 1
        return min(self.cap, base * random.uniform(1 - self.jitter, 1 + self.jitter))

    def reset(self) -> None:
        self.attempt = 0
