"""kaifong.streams.metrics — every Prometheus metric kaifong exposes, declared once.

Layer: streams. Units in names, ``_total`` on counters, bounded labels only (topic, outcome,
stage, error class, ring, district, kind — never an incident or unit id, never personal data).
Label sets are initialised at start (:func:`init_labels`) so dashboards have no gaps.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

from kaifong.streams.settings import Settings
from kaifong.streams.topics import CATALOGUE, INPUTS

# `_created` series double the exposition for nothing a dashboard uses.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Processing is milliseconds; response is seconds to tens of minutes, with bucket edges at the
# default ring targets (60/180/300/600/1200 s) so SLA compliance is exact from the histogram.
_RESPONSE_BUCKETS = (10, 30, 60, 90, 120, 180, 240, 300, 450, 600, 900, 1200, 1800, 3600)
_PROC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_E2E_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

OUTCOMES = ("ok", "invalid", "duplicate", "refused")

EVENTS_IN = Counter("kaifong_events_in_total", "Input events by topic and outcome "
                    "(ok, invalid → dead-lettered, duplicate → dropped, refused → dead-lettered "
                    "by a later stage, e.g. a stale sequence number).", ["topic", "outcome"])
EVENTS_OUT = Counter("kaifong_events_out_total", "Events produced by topic.", ["topic"])
DEADLETTERS = Counter("kaifong_deadletters_total", "Dead-lettered messages by stage and error class.",
                      ["stage", "error_class"])
PROCESSING = Histogram("kaifong_processing_seconds", "Time spent handling one event (or one batch, "
                       "for batch agents) inside the worker.", ["agent"], buckets=_PROC_BUCKETS)
BATCH_SIZE = Histogram("kaifong_batch_events", "Events per batch on the batch paths.", ["agent"],
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000))
REDIS_CALL = Histogram("kaifong_redis_call_seconds", "Redis round trips by operation.", ["op"],
                       buckets=_PROC_BUCKETS)
REDIS_ERRORS = Counter("kaifong_redis_errors_total", "Redis calls that failed (retried until Redis is "
                       "back; nothing is acknowledged meanwhile).", ["op"])
WORKER_READY = Gauge("kaifong_worker_ready", "1 when the worker has joined its groups and serves.")
WORKER_STARTED = Gauge("kaifong_worker_start_time_seconds", "Unix time the worker process started.")
WORKER_READY_SECONDS = Gauge("kaifong_worker_ready_seconds", "Seconds from process start to ready.")
ASSIGNMENTS = Counter("kaifong_assignments_total", "Ring decisions by ring and outcome (ok, shortfall, "
                      "no_candidate, beyond_target).", ["ring", "outcome", "exercise"])
RESERVATION_CONFLICTS = Counter("kaifong_reservation_conflicts_total", "Units lost to another incident "
                                "between choosing and reserving (decided again without them).")
REPORTED_TO_ASSIGNMENT = Histogram("kaifong_reported_to_assignment_seconds", "Incident reported_at (event "
                                   "time) to its assignments acknowledged by the broker.", ["exercise"],
                                   buckets=_E2E_BUCKETS)
_DECISION_BUCKETS = (0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009, 0.01, 0.0125, 0.015,
                     0.02, 0.025, 0.05, 0.1, 0.25, 1.0)
DECISION = Histogram("kaifong_decision_seconds", "Incident received by the worker to its assignments "
                     "acknowledged by the broker.", buckets=_DECISION_BUCKETS)
DECISION_STORED = Histogram("kaifong_decision_stored_seconds", "Inside the worker: incident received to its "
                            "decision stored in Redis and its records handed to the producer (the broker's "
                            "acknowledgement, in kaifong_decision_seconds, not counted).",
                            buckets=_DECISION_BUCKETS)
FIREHOSE_UP = Gauge("kaifong_firehose_up", "1 while the worker's unit firehose process has joined its group "
                    "and applies unit status (always 1 with KAIFONG_FIREHOSE=inline once joined).")
FIREHOSE_RESTARTS = Counter("kaifong_firehose_restarts_total", "Times the worker restarted its unit firehose "
                            "process after it exited.")
REGISTRY_CACHED = Gauge("kaifong_registry_cached_units", "Units whose registry entry this worker holds for "
                        "matching (read whole at start and after a bulk registry change).")
UNITS_STALE = Counter("kaifong_units_stale_total", "Units marked unavailable because their heartbeats stopped.")
# -- ring clocks and escalations (event time) ---------------------------------------------------
RESPONSE = Histogram("kaifong_response_seconds", "Reported → first unit of the ring on scene, per ring and "
                     "district (event time). Exercise incidents only in exercise=\"true\" series.",
                     ["ring", "district", "exercise"], buckets=_RESPONSE_BUCKETS)
RING_OUTCOMES = Counter("kaifong_ring_outcomes_total", "Rings closed, by outcome: met (a unit of the ring on "
                        "scene by its deadline) or breached (deadline passed unmet).",
                        ["ring", "district", "outcome", "exercise"])
ESCALATIONS = Counter("kaifong_escalations_total", "Escalations raised (re-notifications not included), by "
                      "command level and reason.", ["level", "reason", "exercise"])
RENOTIFICATIONS = Counter("kaifong_escalation_renotifications_total", "Re-notifications of unacknowledged "
                          "escalations.", ["level"])
ESCALATION_LATENESS = Histogram("kaifong_escalation_lateness_seconds", "raised_at − deadline_at of deadline "
                                "escalations: how late the clock fired.",
                                buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
# -- response segments and responders (event time) --------------------------------------------
#: Segment buckets around the standards: NENA 15 s, NFPA turnout 60/80 s, travel 240 s, and the
#: default acknowledgement windows (20/59/99 s) and ring targets.
_SEGMENT_BUCKETS = (10, 15, 20, 30, 45, 60, 80, 120, 180, 240, 300, 600)
SEGMENTS = ("acknowledgement", "turnout", "travel")
SEGMENT = Histogram("kaifong_response_segment_seconds", "Per assigned unit, real incidents: acknowledgement "
                    "(assigned → acknowledged), turnout (assigned → en route), travel (en route → on scene), "
                    "by ring, unit kind and district (event time).", ["segment", "ring", "kind", "district"],
                    buckets=_SEGMENT_BUCKETS)
NEEDS_MET = Histogram("kaifong_needs_met_seconds", "Real incidents: reported → the run card's responders and "
                      "equipment on scene (event time), by district.", ["district"], buckets=_RESPONSE_BUCKETS)
UNITS_ASSIGNED = Counter("kaifong_units_assigned_total", "Units assigned to incidents (each unit of each "
                         "assignment): the denominator of the no-show and decline ratios.",
                         ["ring", "district", "exercise"])
NO_SHOWS = Counter("kaifong_unit_no_shows_total", "Assigned units that neither acknowledged nor moved within "
                   "their acknowledgement window: released and replaced.", ["ring", "district", "exercise"])
DECLINES = Counter("kaifong_unit_declines_total", "Assignments declined by their unit: released and replaced.",
                   ["ring", "district", "reason", "exercise"])
STUCK = Counter("kaifong_units_stuck_total", "Units en route far beyond their ETA (KAIFONG_STUCK_FACTOR), flagged "
                "on the incident.", ["ring", "district", "exercise"])
REDISPATCHES = Counter("kaifong_redispatches_total", "Rings decided again before their deadline, by cause.",
                       ["ring", "cause", "exercise"])
DECLINE_REASONS = ("busy", "unreachable", "no_capacity", "off_duty", "other")
REDISPATCH_CAUSES = ("no_show", "declined", "stuck", "severity")
ESCALATION_ACK = Histogram("kaifong_escalation_ack_seconds", "Escalation raised → acknowledged.", ["level"],
                           buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600))
ESCALATIONS_OPEN = Gauge("kaifong_escalations_unacknowledged", "Escalations raised and not yet acknowledged "
                         "(real incidents only).", ["level"])
INCIDENTS_OPEN = Gauge("kaifong_incidents_open", "Open incidents owned by this worker.", ["exercise"])
CLOCKS_PENDING = Gauge("kaifong_clock_deadlines_pending", "Ring deadlines waiting to fire (this worker's "
                       "partitions).")

# -- drills -------------------------------------------------------------------------------------------
DRILLS = Counter("kaifong_drills_total", "Pull-test results by outcome and district.", ["outcome", "district"])
DRILLS_ISSUED = Counter("kaifong_drills_issued_total", "Pull tests issued, by reason (scheduled, manual).",
                        ["reason"])
DRILL_RESPONSE = Histogram("kaifong_drill_response_seconds", "Drill issued → unit acknowledged / mustered.",
                           ["stage"], buckets=(5, 15, 30, 45, 60, 90, 120, 180, 240, 300, 600))
UNITS_NEVER_DRILLED = Gauge("kaifong_units_never_drilled", "Units not drilled within the coverage window.")

# -- units, broker, HTTP --------------------------------------------------------------------------------
UNITS_AVAILABLE = Gauge("kaifong_units_available", "Dispatchable units (available, fresh, not reserved).",
                        ["district", "kind"])
CONSUMER_LAG = Gauge("kaifong_consumer_lag", "Messages behind the end of each input partition this worker owns.",
                     ["topic", "partition"])
BROKER_TAIL_FETCH = Gauge("kaifong_broker_tail_fetch_seconds", "Watchdog: time to fetch the newest record "
                          "of a partition (the embedded broker degrades with record batches per partition).",
                          ["topic", "partition"])
HTTP_REQUESTS = Counter("kaifong_http_requests_total", "HTTP requests by route and status code.",
                        ["route", "code"])
HTTP_UNAUTHORIZED = Counter("kaifong_http_unauthorized_total", "HTTP requests refused for a missing or "
                            "wrong bearer token.", ["route"])
INTERNAL_ERRORS = Counter("kaifong_internal_errors_total", "Unexpected handler errors (the event is "
                          "dead-lettered with stage and class; the worker goes on).", ["agent"])


def init_labels(settings: Settings) -> None:
    """Create every bounded label combination with zero so series exist from the start."""
    for spec in INPUTS:
        for outcome in OUTCOMES:
            EVENTS_IN.labels(spec.name(settings), outcome)
    for spec in CATALOGUE:
        EVENTS_OUT.labels(spec.name(settings))
    for error_class in ("empty", "too_large", "not_json", "not_object", "missing_field", "wrong_type",
                        "bad_enum", "out_of_range", "unknown_field", "bad_time", "bad_format",
                        "too_long", "schema", "stale_seq", "internal_error"):
        DEADLETTERS.labels("intake", error_class)
    for op in ("dedupe", "handle", "units_batch"):
        REDIS_ERRORS.labels(op)
    for agent in ("incidents_reported", "incidents_updates", "drills_responses", "ring_clock"):
        INTERNAL_ERRORS.labels(agent)
    for ring in settings.ring_table():
        for outcome in ("ok", "shortfall", "no_candidate", "beyond_target"):
            for exercise in ("false", "true"):
                ASSIGNMENTS.labels(str(ring.number), outcome, exercise)
    for exercise in ("false", "true"):
        REPORTED_TO_ASSIGNMENT.labels(exercise)
        INCIDENTS_OPEN.labels(exercise)
    districts = settings.district_labels()
    for ring in settings.ring_table():
        for district in districts:
            for exercise in ("false", "true"):
                RESPONSE.labels(str(ring.number), district, exercise)
                for outcome in ("met", "breached"):
                    RING_OUTCOMES.labels(str(ring.number), district, outcome, exercise)
    kinds = ("post", "unit", "grid_team", "street_force", "professional")
    for ring in settings.ring_table():
        r = str(ring.number)
        for exercise in ("false", "true"):
            for cause in REDISPATCH_CAUSES:
                REDISPATCHES.labels(r, cause, exercise)
        for district in districts:
            for exercise in ("false", "true"):
                NO_SHOWS.labels(r, district, exercise)
                UNITS_ASSIGNED.labels(r, district, exercise)
                STUCK.labels(r, district, exercise)
                for reason in DECLINE_REASONS:
                    DECLINES.labels(r, district, reason, exercise)
            # Segments per kind only where a ring dispatches that kind (rings 1-2: posts and
            # units on foot; ring 3 grid teams, 4 street forces, 5 professionals).
            for kind in (kinds[:2] if ring.number <= 2 else kinds[ring.number - 1:ring.number]):
                for segment in SEGMENTS:
                    SEGMENT.labels(segment, r, kind, district)
    for district in districts:
        NEEDS_MET.labels(district)
    for level in ("grid", "street", "district", "city"):
        ESCALATIONS_OPEN.labels(level)
        ESCALATION_ACK.labels(level)
        RENOTIFICATIONS.labels(level)
        for reason in ("ring_deadline_missed", "no_candidate", "unit_declined", "severity"):
            for exercise in ("false", "true"):
                ESCALATIONS.labels(level, reason, exercise)
    for district in districts:
        for outcome in ("pass", "late", "fail", "no_answer", "aborted"):
            DRILLS.labels(outcome, district)
        for kind in ("post", "unit", "grid_team", "street_force", "professional"):
            UNITS_AVAILABLE.labels(district, kind)
    for stage in ("acknowledged", "mustered"):
        DRILL_RESPONSE.labels(stage)
    for reason in ("scheduled", "manual"):
        DRILLS_ISSUED.labels(reason)


def district_label(settings: Settings, district: str | None) -> str:
    """A district as a bounded label value: a configured district, else ``other``."""
    return district if district and district in settings.district_labels() else "other"


# -- broker data loss (agents.brokerwatch) ----------------------------------------------------------------
BROKER_DATA_LOSS = Gauge("kaifong_broker_data_loss", "1 once this worker saw the broker lose data (an end "
                         "offset went backwards, a topic or partitions vanished: the embedded broker keeps "
                         "everything in memory). Stays 1 until the worker restarts; page on it.")
BROKER_REACHABLE = Gauge("kaifong_broker_reachable", "Watchdog: 1 when the last metadata/offsets request "
                         "to the broker succeeded.")


# -- duty seats and notifications (agents.flows.seatbook, agents.flows.notify) ------------------------
SEATS = Gauge("kaifong_seats", "Duty seats in the seats file in use, by level.", ["level"])
SEATS_RELOADS = Counter("kaifong_seats_reloads_total", "Reads of the seats file by outcome (ok; invalid: "
                        "the previous seats stay in use and every reason is logged).", ["outcome"])
ESCALATIONS_UNROUTED = Counter("kaifong_escalations_routed_up_total", "Escalations addressed to a higher level "
                               "than raised (no seat of their level covered the incident or was on duty), by "
                               "the level raised and the level told.", ["raised", "told"])
NOTIFY_PUSHES = Counter("kaifong_notify_pushes_total", "Pushes to an Alertmanager (/api/v2/alerts) by target "
                        "(host:port of KAIFONG_ALERTMANAGER_URLS) and outcome (ok, error).", ["target", "outcome"])
NOTIFY_RETRIES = Counter("kaifong_notify_retries_total", "Pushes tried again after a failure (with backoff), by "
                         "target.", ["target"])
NOTIFY_ALERTS = Counter("kaifong_notify_alerts_total", "Alerts delivered to at least one Alertmanager, by state "
                        "(firing: raised or kept alive; resolved: acknowledged or the incident closed).", ["state"])
NOTIFY_PENDING = Gauge("kaifong_notify_pending", "Alert changes (new, resolved) that no Alertmanager has accepted "
                       "yet; they go out once one answers.")
NOTIFY_FIRING = Gauge("kaifong_notify_firing", "Escalation alerts held open in Alertmanager (one per escalation "
                      "and seat).")
NOTIFY_LAST_OK = Gauge("kaifong_notify_last_success_timestamp_seconds", "When an Alertmanager last accepted a "
                       "push (Unix time), by target.", ["target"])
NOTIFY_LATENCY = Histogram("kaifong_notify_seconds", "Escalation raised → first accepted by an Alertmanager.",
                           buckets=_E2E_BUCKETS)
AUDIT = Counter("kaifong_audit_events_total", "Human actions recorded on the audit topic, by action and outcome "
                "(ok, refused).", ["action", "outcome"])
