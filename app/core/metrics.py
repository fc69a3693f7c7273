"""Prometheus metrics of the pipeline, on a registry owned by one app or worker instance."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000)

# Fine enough around the one-second mark that lag quantiles under load mean something.
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 20, 30, 60)

SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True, slots=True)
class Metrics:
    registry: CollectorRegistry
    accepted: Counter
    persisted: Counter
    rejected: Counter
    dead_lettered: Counter
    batch_size: Histogram
    batch_write_seconds: Histogram
    ingest_to_persist_seconds: Histogram
    queue_depth: Gauge
    circuit_open: Gauge
    writer_errors: Counter
    ledger_head_seq: Gauge
    api_key_rows_refused: Counter
    writers: Gauge
    threshold_violations: Counter
    syslog_messages: Counter
    checkpoints: Counter
    checkpoint_cosignatures: Gauge
    witness_failures: Counter
    quorum_missed: Counter
    unwitnessed_seconds: Gauge
    watch_alerts: Counter
    watch_examined: Counter
    watch_recorded: Counter
    watch_lag: Gauge
    watch_alert_latency: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> Metrics:
        reg = registry or CollectorRegistry()
        ProcessCollector(registry=reg)  # process_resident_memory_bytes and the like
        return cls(
            registry=reg,
            accepted=Counter(
                "audit_events_accepted", "Events accepted (202) into the stream", registry=reg
            ),
            persisted=Counter(
                "audit_events_persisted", "Events newly inserted into audit_log", registry=reg
            ),
            rejected=Counter(
                "audit_events_rejected",
                "Events refused at ingest, by reason",
                ["reason"],
                registry=reg,
            ),
            dead_lettered=Counter(
                "audit_events_dead_lettered",
                "Events or stream entries moved to the dead-letter stream",
                registry=reg,
            ),
            batch_size=Histogram(
                "audit_batch_size",
                "Events per committed batch",
                buckets=BATCH_BUCKETS,
                registry=reg,
            ),
            batch_write_seconds=Histogram(
                "audit_batch_write_seconds",
                "Time to write and commit one batch",
                buckets=SECONDS_BUCKETS,
                registry=reg,
            ),
            ingest_to_persist_seconds=Histogram(
                "audit_ingest_to_persist_seconds",
                "From receipt by the API to commit, per stream entry (one request's events)",
                buckets=LAG_BUCKETS,
                registry=reg,
            ),
            queue_depth=Gauge(
                "audit_queue_depth", "Events accepted and not yet persisted", registry=reg
            ),
            circuit_open=Gauge(
                "audit_circuit_open",
                "1 while writers have stopped reading (database down)",
                registry=reg,
            ),
            writer_errors=Counter(
                "audit_writer_errors", "Errors caught by writer loops", ["stage"], registry=reg
            ),
            ledger_head_seq=Gauge(
                "audit_ledger_head_seq",
                "Seq of the newest ledger entry this process sealed, per chain (stream shard)",
                ["chain"],
                registry=reg,
            ),
            api_key_rows_refused=Counter(
                "audit_api_key_rows_refused",
                "Keys presented whose api_keys row's MAC does not check (made or changed around"
                " `keys create`, or not sealed yet)",
                registry=reg,
            ),
            writers=Gauge("audit_writers", "Writer tasks running in this process", registry=reg),
            threshold_violations=Counter(
                "audit_threshold_violations",
                "Performance thresholds found exceeded (each recorded as an audit event, at most"
                " one per threshold and interval)",
                ["metric"],
                registry=reg,
            ),
            syslog_messages=Counter(
                "audit_syslog_messages",
                "Syslog messages and connections by outcome: accepted, rejected (unusable),"
                " rejected_dropped (rejected past the dead-letter caps), dead_lettered"
                " (rejected, or held back at shutdown), held_back (the queue refused; retried),"
                " lost (cut at shutdown), bad_frame, refused_source, refused_busy (a"
                " connection cap), refused_handshake (failed, timed out, or made way for a"
                " newer one), accept_error",
                ["outcome"],
                registry=reg,
            ),
            checkpoints=Counter(
                "audit_checkpoints",
                "Checkpoints of a chain's log signed with the ledger key (made by the writer"
                " process that holds the checkpoint lock)",
                ["chain"],
                registry=reg,
            ),
            checkpoint_cosignatures=Gauge(
                "audit_checkpoint_cosignatures",
                "Witness cosignatures the chain's newest checkpoint got",
                ["chain"],
                registry=reg,
            ),
            witness_failures=Counter(
                "audit_witness_failures",
                "Checkpoints a witness did not cosign (refused, unreachable, or a bad answer)",
                ["witness"],
                registry=reg,
            ),
            quorum_missed=Counter(
                "audit_witness_quorum_missed",
                "Checkpoints that got fewer cosignatures than AUDIT_WITNESS_QUORUM",
                ["chain"],
                registry=reg,
            ),
            unwitnessed_seconds=Gauge(
                "audit_log_unwitnessed_seconds",
                "How long the chain's log has held leaves that no checkpoint cosigned by a"
                " quorum covers (0: all covered)",
                ["chain"],
                registry=reg,
            ),
            watch_alerts=Counter(
                "audit_watch_alerts",
                "Cases of possibly inappropriate access stored by the watch, by rule (each case"
                " once, however often it is found)",
                ["rule"],
                registry=reg,
            ),
            watch_examined=Counter(
                "audit_watch_examined_events", "Sealed events the watch examined", registry=reg
            ),
            watch_recorded=Counter(
                "audit_watch_alerts_recorded",
                "Alerts queued as audit.alert.raised events (a repeat after a restart is stored"
                " once)",
                registry=reg,
            ),
            watch_lag=Gauge(
                "audit_watch_lag_entries",
                "Ledger entries of the chain sealed and not yet examined by the watch (newest"
                " sealed seq minus the newest examined), as the process watching last saw it",
                ["chain"],
                registry=reg,
            ),
            watch_alert_latency=Histogram(
                "audit_watch_alert_latency_seconds",
                "From the receipt of the first event of a case to the case's alert stored",
                buckets=LAG_BUCKETS,
                registry=reg,
            ),
        )


# Cumulative bucket counts of one Prometheus histogram: upper bound (math.inf for +Inf) -> count.
Buckets = dict[float, float]


def bucket_delta(after: Mapping[float, float], before: Mapping[float, float]) -> Buckets:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def histogram_quantile(buckets: Mapping[float, float], share: float) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket that holds the rank. A rank in
    the +Inf bucket answers the highest finite bound (a floor). None without observations."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank = share * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower
