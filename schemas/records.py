"""kaifong.schemas.records — typed Python records of every published event.

Layer: schemas (imports nothing of kaifong). Each record mirrors one JSON Schema in
``schemas/json``; ``tests/test_schemas.py`` proves the two agree both ways. Records are
``include_metadata=False`` (no module path on the wire) and ``coerce=True`` (datetimes come
back as ``datetime``, nested objects as records).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import faust


class _Wire(faust.Record, abstract=True, include_metadata=False, coerce=True):  # type: ignore[call-arg]
    """Common base: the JSON shape on the wire, optional fields omitted when unset."""

    #: Fields the schema requires but allows to be null: kept as ``null`` on the wire.
    keep_null: ClassVar[frozenset[str]] = frozenset()

    def to_wire(self) -> dict[str, Any]:
        """The record as the JSON object of its schema (``None`` optionals dropped)."""
        out: dict[str, Any] = _strip(self.asdict())
        for name in self.keep_null:
            out.setdefault(name, None)
        return out


def _strip(value: Any) -> Any:
    # Closed schemas do not accept ``null`` for an absent optional field, so the wire form
    # omits it instead; datetimes become RFC 3339 strings.
    if isinstance(value, faust.Record):
        return _strip(value.asdict())
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_strip(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


class Location(_Wire, namespace="kaifong.location.v1"):
    """A WGS-84 position."""

    lat: float
    lon: float


class Needs(_Wire, namespace="kaifong.needs.v1"):
    """What an incident needs on scene."""

    responders: int | None = None
    equipment: list[str] | None = None


class Caller(_Wire, namespace="kaifong.caller.v1"):
    """Caller contact: personal data, never logged nor used as a label."""

    phone: str | None = None
    name: str | None = None


class IncidentReported(_Wire, namespace="kaifong.incident_reported.v1"):
    """An incident reported upstream (topic ``incidents.reported.v1``, key incident_id)."""

    event_id: str
    incident_id: str
    category: str
    severity: int
    reported_at: datetime
    location: Location
    source: str
    exercise: bool
    district: str | None = None
    street: str | None = None
    grid: str | None = None
    police_grid: str | None = None
    venue_id: str | None = None
    needs: Needs | None = None
    description: str | None = None
    caller: Caller | None = None


class IncidentUpdated(_Wire, namespace="kaifong.incident_update.v1"):
    """A milestone or change of an incident (topic ``incidents.updates.v1``)."""

    event_id: str
    incident_id: str
    kind: str
    at: datetime
    unit_id: str | None = None
    severity: int | None = None
    note: str | None = None
    escalation_id: str | None = None
    by: str | None = None
    reason: str | None = None


class Venue(_Wire, namespace="kaifong.venue.v1"):
    """The venue a unit belongs to."""

    id: str
    type: str


class UnitRegistered(_Wire, namespace="kaifong.unit_registered.v1"):
    """A unit's registry entry (topic ``units.registry.v1``, compacted, key unit_id)."""

    unit_id: str
    kind: str
    name: str
    district: str
    police_grid: str
    grid: str
    venue: Venue
    home: Location
    responders: int
    equipment: list[str]
    event_id: str | None = None
    street: str | None = None
    at: datetime | None = None


class UnitStatusChanged(_Wire, namespace="kaifong.unit_status.v1"):
    """A unit's live status or heartbeat (topic ``units.status.v1``, key unit_id)."""

    event_id: str
    unit_id: str
    status: str
    at: datetime
    seq: int
    location: Location | None = None
    responders_on_duty: int | None = None
    incident_id: str | None = None


class DrillResponded(_Wire, namespace="kaifong.drill_response.v1"):
    """A unit's answer to a pull test (topic ``drills.responses.v1``, key drill_id)."""

    event_id: str
    drill_id: str
    unit_id: str
    stage: str
    at: datetime
    headcount: int | None = None


class AssignedUnit(_Wire, namespace="kaifong.assigned_unit.v1"):
    """One unit inside an assignment."""

    unit_id: str
    kind: str
    distance_m: float
    eta_s: float
    responders: int
    rank: int | None = None
    equipment: list[str] | None = None


class Shortfall(_Wire, namespace="kaifong.shortfall.v1"):
    """What a ring's chosen units could not cover within its target."""

    responders: int | None = None
    equipment: list[str] | None = None


class UnitsAssigned(_Wire, namespace="kaifong.assignment.v1"):
    """Units chosen and reserved for one ring (topic ``dispatch.assignments.v1``)."""

    assignment_id: str
    incident_id: str
    ring: int
    units: list[AssignedUnit]
    decided_at: datetime
    reason: str
    attempt: int | None = None
    shortfall: Shortfall | None = None
    exercise: bool | None = None


class EscalationRaised(_Wire, namespace="kaifong.escalation.v1"):
    """A missed or impossible ring raised to a command level (``incidents.escalations.v1``)."""

    escalation_id: str
    incident_id: str
    ring: int
    level: str
    reason: str
    deadline_at: datetime
    raised_at: datetime
    breached_by_s: float
    attempt: int
    exercise: bool
    district: str | None = None
    street: str | None = None
    grid: str | None = None
    notification: int | None = None
    seats: list[str] | None = None
    seat_level: str | None = None


class RingState(_Wire, namespace="kaifong.ring_state.v1"):
    """One ring clock inside an incident's state."""

    ring: int
    name: str
    target_s: float
    deadline_at: datetime
    state: str
    seconds: float | None = None
    units: list[str] | None = None


class UnitOnIncident(_Wire, namespace="kaifong.unit_on_incident.v1"):
    """A unit assigned to an incident and its last known status."""

    unit_id: str
    ring: int
    status: str
    kind: str | None = None
    eta_s: float | None = None
    assigned_at: datetime | None = None
    ack_due_at: datetime | None = None
    acknowledged_at: datetime | None = None
    en_route_at: datetime | None = None
    on_scene_at: datetime | None = None
    released_at: datetime | None = None
    decline_reason: str | None = None
    stuck: bool | None = None


class IncidentState(_Wire, namespace="kaifong.incident_state.v1"):
    """The whole current picture of one incident (``incidents.state.v1``, compacted)."""

    incident_id: str
    version: int
    status: str
    category: str
    severity: int
    reported_at: datetime
    updated_at: datetime
    location: Location
    exercise: bool
    rings: list[RingState]
    units: list[UnitOnIncident]
    district: str | None = None
    street: str | None = None
    grid: str | None = None
    source: str | None = None
    escalation_level: str | None = None
    needs_met_at: datetime | None = None
    needs_met_s: float | None = None


class DrillIssued(_Wire, namespace="kaifong.drill_issued.v1"):
    """A pull test issued to a unit (``drills.issued.v1``)."""

    drill_id: str
    unit_id: str
    channel: str
    issued_at: datetime
    ack_target_s: float | None = None
    muster_target_s: float | None = None
    expected_headcount: int | None = None
    reason: str | None = None
    district: str | None = None
    grid: str | None = None


class DrillScored(_Wire, namespace="kaifong.drill_result.v1"):
    """The outcome of a pull test (``drills.results.v1``)."""

    drill_id: str
    unit_id: str
    channel: str
    issued_at: datetime
    keep_null = frozenset({"ack_s", "muster_s"})

    outcome: str
    ack_s: float | None
    muster_s: float | None
    decided_at: datetime
    headcount: int | None = None
    district: str | None = None
    grid: str | None = None


class DeadLettered(_Wire, namespace="kaifong.dead_letter.v1"):
    """An input the pipeline refused, with the reason (``deadletter.v1``)."""

    source_topic: str
    source_partition: int
    source_offset: int
    stage: str
    error_class: str
    error: str
    keep_null = frozenset({"key_b64", "value_b64"})

    key_b64: str | None
    value_b64: str | None
    value_size: int
    value_truncated: bool
    value_sha256: str
    received_at: datetime


#: Event type name (the JSON Schema file stem, and the CLI's ``publish`` argument) → record.
RECORDS: dict[str, type[_Wire]] = {
    "incident-reported": IncidentReported,
    "incident-update": IncidentUpdated,
    "unit-registered": UnitRegistered,
    "unit-status": UnitStatusChanged,
    "drill-response": DrillResponded,
    "assignment": UnitsAssigned,
    "escalation": EscalationRaised,
    "incident-state": IncidentState,
    "drill-issued": DrillIssued,
    "drill-result": DrillScored,
    "dead-letter": DeadLettered,
}
