"""kaifong.streams.metrics — every Prometheus metric kaifong exposes, declared once.

Layer: streams. Units in names, ``_total`` on counters, bounded labels only (topic, outcome,
stage, error class, ring, district, kind — never an incident or unit id, never personal data).
Label sets are initialised at start (:func:`init_labels`) so dashboards have no gaps.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from kaifong.streams.settings import Settings
from kaifong.streams.topics import CATALOGUE, INPUTS

# Processing is milliseconds; response is seconds to tens of minutes.
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
DECISION = Histogram("kaifong_decision_seconds", "Inside the worker: incident received to its assignments "
                     "acknowledged by the broker.", buckets=_PROC_BUCKETS)
UNITS_STALE = Counter("kaifong_units_stale_total", "Units marked unavailable because their heartbeats stopped.")
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
    for ring in settings.ring_table():
        for outcome in ("ok", "shortfall", "no_candidate", "beyond_target"):
            for exercise in ("false", "true"):
                ASSIGNMENTS.labels(str(ring.number), outcome, exercise)
    for exercise in ("false", "true"):
        REPORTED_TO_ASSIGNMENT.labels(exercise)
