"""kaifong.streams.topics — the topic catalogue of DESIGN.md §3: names, keys, partitions, configs.

Layer: streams. Every topic is created up front with explicit partitions (an auto-created
topic gets the broker's default, 4 on Tansu, which breaks Faust's co-partitioning checks).
"""

from __future__ import annotations

from dataclasses import dataclass

from kaifong.streams.settings import Settings

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic of the catalogue."""

    suffix: str  # name without the configurable prefix, e.g. "incidents.reported.v1"
    key: str  # the entity the key identifies (one key, one partition, one owner)
    event_type: str  # JSON Schema (schemas/json/<event_type>.schema.json)
    role: str  # "input" (published upstream, validated at intake) or "output"
    compacted: bool = False
    retention_ms: int = 7 * DAY_MS
    single_partition: bool = False
    doc: str = ""

    def name(self, settings: Settings) -> str:
        """Full topic name with the configured prefix."""
        return settings.topic_prefix + self.suffix

    def partitions(self, settings: Settings) -> int:
        """Partition count for this topic under ``settings``."""
        return 1 if self.single_partition else settings.partitions

    def configs(self) -> dict[str, str]:
        """Topic-level configs (retention/compaction) applied at creation."""
        if self.compacted:
            return {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}
        return {"cleanup.policy": "delete", "retention.ms": str(self.retention_ms)}


INCIDENTS_REPORTED = TopicSpec("incidents.reported.v1", "incident_id", "incident-reported", "input",
                               retention_ms=90 * DAY_MS, doc="Incidents from 110, video, volunteers, radios.")
INCIDENTS_UPDATES = TopicSpec("incidents.updates.v1", "incident_id", "incident-update", "input",
                              retention_ms=90 * DAY_MS, doc="Milestones: acknowledged, en_route, on_scene…")
UNITS_REGISTRY = TopicSpec("units.registry.v1", "unit_id", "unit-registered", "input", compacted=True,
                           doc="The unit registry (upserts), compacted.")
UNITS_STATUS = TopicSpec("units.status.v1", "unit_id", "unit-status", "input", retention_ms=1 * DAY_MS,
                         doc="Unit status and heartbeats: the high-volume firehose.")
DRILLS_RESPONSES = TopicSpec("drills.responses.v1", "drill_id", "drill-response", "input",
                             retention_ms=90 * DAY_MS, doc="Units answering pull tests.")
ASSIGNMENTS = TopicSpec("dispatch.assignments.v1", "incident_id", "assignment", "output",
                        retention_ms=90 * DAY_MS, doc="Units chosen and reserved per ring.")
ESCALATIONS = TopicSpec("incidents.escalations.v1", "incident_id", "escalation", "output",
                        retention_ms=90 * DAY_MS, doc="Missed rings raised to command levels.")
INCIDENTS_STATE = TopicSpec("incidents.state.v1", "incident_id", "incident-state", "output",
                            compacted=True, doc="The live picture of every incident, compacted.")
DRILLS_ISSUED = TopicSpec("drills.issued.v1", "drill_id", "drill-issued", "output",
                          retention_ms=90 * DAY_MS, doc="Pull tests issued.")
DRILLS_RESULTS = TopicSpec("drills.results.v1", "drill_id", "drill-result", "output",
                           retention_ms=90 * DAY_MS, doc="Pull-test outcomes.")
DEADLETTER = TopicSpec("deadletter.v1", "original key", "dead-letter", "output",
                       retention_ms=30 * DAY_MS, doc="Everything refused, with the reason.")
AUDIT = TopicSpec("audit.v1", "seat (or service)", "audit", "output", retention_ms=400 * DAY_MS,
                  doc="Human actions on the web port (acknowledgements, drill orders, sign-ins), done or refused.")

CATALOGUE: tuple[TopicSpec, ...] = (
    INCIDENTS_REPORTED, INCIDENTS_UPDATES, UNITS_REGISTRY, UNITS_STATUS, DRILLS_RESPONSES,
    ASSIGNMENTS, ESCALATIONS, INCIDENTS_STATE, DRILLS_ISSUED, DRILLS_RESULTS, DEADLETTER, AUDIT,
)

INPUTS: tuple[TopicSpec, ...] = tuple(t for t in CATALOGUE if t.role == "input")

#: Event type (CLI name) → the input topic it is published to.
INPUT_BY_EVENT_TYPE: dict[str, TopicSpec] = {t.event_type: t for t in INPUTS}


def by_name(settings: Settings, name: str) -> TopicSpec:
    """The spec of a topic given its full or suffix name."""
    for spec in CATALOGUE:
        if name in (spec.name(settings), spec.suffix):
            return spec
    raise KeyError(f"unknown topic {name!r}")
