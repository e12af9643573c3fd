"""kaifong.agents.flows.dispatch — the matcher's inputs: run cards, candidates, the decision.

Layer: agents/flows. Thin around :mod:`kaifong.agents.core.dispatch`: the run cards the
settings name, the candidates search through the unit store (one script call; small radius
first, wider only when a kind found none), and the matcher's decision among them. Reserving
what it chose is part of the incident's change (:mod:`kaifong.agents.flows.incidents`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from kaifong.agents.core import dispatch, matching
from kaifong.agents.core.matching import Candidate, IncidentView, Needs, RingDecision
from kaifong.agents.store.units import UnitStore
from kaifong.streams.settings import Settings


@dataclass
class Dispatcher:
    """Plans, searches and decides; holds no state of its own."""

    settings: Settings
    store: UnitStore
    clock: Callable[[], datetime]
    run_cards: dict[str, dict[int, Needs]] = field(default_factory=lambda: dict(matching.RUN_CARDS))

    @classmethod
    def from_settings(cls, settings: Settings, store: UnitStore, clock: Callable[[], datetime]) -> Dispatcher:
        """Build with the run cards named by the settings (or the built-in ones)."""
        cards = dict(matching.RUN_CARDS)
        if settings.run_cards_file:
            cards = matching.load_run_cards(orjson.loads(Path(settings.run_cards_file).read_bytes()))
        return cls(settings, store, clock, cards)

    @property
    def topic(self) -> str:
        """Full name of the assignments topic."""
        return self.settings.topic_prefix + "dispatch.assignments.v1"

    def plan(self, view: IncidentView, rings: list[int]) -> dispatch.Plan:
        """What a decision for ``rings`` searches for."""
        return dispatch.plan(view, rings, self.settings.ring_table())

    def search_args(self, view: IncidentView, p: dispatch.Plan) -> list[Any]:
        """Arguments of the candidates search (``lua/lib/candidates.lua``) for a script that
        runs it in its own round trip; read its result with ``store.found``."""
        return self.store.search_args(view.lat, view.lon, p.searches, pool=p.pool)

    async def find(self, view: IncidentView, p: dispatch.Plan) -> list[Candidate]:
        """Dispatchable candidates near the incident (one round trip)."""
        return await self.store.candidates(view.lat, view.lon, p.searches, pool=p.pool)

    def choose(self, view: IncidentView, candidates: list[Candidate], p: dispatch.Plan,
               exclude: frozenset[str] = frozenset()) -> list[RingDecision]:
        """The matcher's decision for the plan's rings, never one of ``exclude``."""
        return dispatch.choose(view, candidates, p, self.run_cards, exclude=exclude,
                               readiness_weight=self.settings.readiness_weight)
