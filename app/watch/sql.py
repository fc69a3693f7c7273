"""The watch's SQL, every statement in one place. asyncpg placeholders ($1...)."""

# -- each organization's settings: what changed (the triggers of migration 0015 bump a version
# per statement), then its rows, read in one snapshot with its version
CONFIG_VERSIONS = "SELECT organization_id, version FROM watch_config_versions"
CONFIG_VERSION = "SELECT version FROM watch_config_versions WHERE organization_id = $1"
RULE_SETTINGS = """
SELECT rule, enabled, severity, params::text AS params FROM watch_rule_settings
WHERE organization_id = $1
"""
RESTRICTED_PATIENTS = """
SELECT patient_id, category FROM watch_restricted_patients WHERE organization_id = $1
"""
RELATIONSHIPS = """
SELECT principal_id, patient_id, relation FROM watch_relationships WHERE organization_id = $1
"""

# -- the chains and how far the detector has examined them
HIGHEST_CHAIN = "SELECT max(chain) FROM audit_ledger"
NEWEST_SEQ = "SELECT max(seq) FROM audit_ledger WHERE chain = $1"
ENTRIES_AFTER = """
SELECT seq, batch_id, event_count, first_timestamp, last_timestamp FROM audit_ledger
WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3
"""
# Moves a chain's stored progress forward to $2, never back (two detectors at once, a slower
# one committing after a faster one).
ADVANCE = """
INSERT INTO watch_progress AS p (chain, seq) VALUES ($1, $2)
ON CONFLICT (chain) DO UPDATE SET seq = greatest(p.seq, EXCLUDED.seq), updated_at = now()
"""

# -- the accesses of sealed batches: the columns app.watch.cases.Access holds, in its order, of
# the events some rule reads (about a patient, break-glass, failures, the classifications an
# after-hours rule reads ($5), actions a bulk export rule reads the details of ($4, LIKE
# patterns)). Times as seconds since the epoch (double precision: microseconds exact for
# centuries); the address of failures only; details only of those actions, the others' never
# leave the server. Found through the batch index (BRIN, its new ranges summarized first): the
# time bounds are the whole months of the entries' times, so that only their partitions are
# read, and never an index by time (an entry's times can span minutes, a range that would read
# every event of those minutes). In no order: the detector puts them in event time order
# (cheaper than a sort of wide rows here).
ACCESSES = """
SELECT event_id, organization_id, date_part('epoch', "timestamp") AS at,
       date_part('epoch', received_at) AS received, action, status, principal_id,
       principal_type, patient_id, data_classification, break_glass,
       CASE WHEN status = 'failure' THEN ip_address END AS ip_address,
       CASE WHEN details IS NOT NULL AND action LIKE ANY($4::text[]) THEN details::text END
           AS details
FROM audit_log
WHERE batch_id = ANY($1::bigint[]) AND "timestamp" >= $2 AND "timestamp" < $3
  AND (patient_id IS NOT NULL OR break_glass OR status = 'failure'
       OR data_classification = ANY($5::text[])
       OR (details IS NOT NULL AND action LIKE ANY($4::text[])))
"""

# -- what came before: principals first seen after a detector started, read back through the
# principal index from the entries examined before it started ($5: the newest seq examined then,
# per chain, chain c at index c + 1; later entries it examines itself, in order). Each patient's
# latest access in the span; auth failures in the span.
RECENT_PATIENTS = """
SELECT DISTINCT ON (a.principal_id, a.patient_id)
       a.principal_id, date_part('epoch', a."timestamp") AS at, a.patient_id, a.event_id
FROM audit_log a JOIN audit_ledger l ON l.batch_id = a.batch_id
WHERE a.organization_id = $1 AND a.principal_id = ANY($2::text[]) AND a.patient_id IS NOT NULL
  AND a."timestamp" >= $3 AND a."timestamp" <= $4 AND l.seq <= ($5::bigint[])[l.chain + 1]
ORDER BY a.principal_id, a.patient_id, a."timestamp" DESC
"""
RECENT_FAILURES = """
SELECT a.principal_id, date_part('epoch', a."timestamp") AS at, a.event_id, a.ip_address
FROM audit_log a JOIN audit_ledger l ON l.batch_id = a.batch_id
WHERE a.organization_id = $1 AND a.principal_id = ANY($2::text[]) AND a.status = 'failure'
  AND a.action LIKE $6 AND a."timestamp" >= $3 AND a."timestamp" <= $4
  AND l.seq <= ($5::bigint[])[l.chain + 1]
"""
ALL_PROGRESS = "SELECT chain, seq FROM watch_progress"
# A principal's baseline: the median of its distinct patients per window ($5 seconds since the
# epoch) over the windows it accessed any in, from $3 to $4 (the days before the day), and how
# many windows that is.
BASELINES = """
SELECT principal_id, percentile_cont(0.5) WITHIN GROUP (ORDER BY patients) AS median,
       count(*) AS windows
FROM (
    SELECT principal_id, floor(date_part('epoch', "timestamp") / $5) AS w,
           count(DISTINCT patient_id) AS patients
    FROM audit_log
    WHERE organization_id = $1 AND principal_id = ANY($2::text[]) AND patient_id IS NOT NULL
      AND "timestamp" >= $3 AND "timestamp" < $4
    GROUP BY principal_id, w
) AS per_window
GROUP BY principal_id
"""

# -- alerts: inserted once (a case found again is the same row), and recorded
INSERT_ALERTS = """
INSERT INTO watch_alerts (alert_id, organization_id, rule, severity, subject, principal_id,
    patient_id, window_start, window_end, event_ids, details)
SELECT a.alert_id, a.organization_id, a.rule, a.severity, a.subject, a.principal_id,
       a.patient_id, a.window_start, a.window_end,
       ARRAY(SELECT jsonb_array_elements_text(a.event_ids)::uuid), a.details
FROM jsonb_to_recordset($1::jsonb) AS a(alert_id uuid, organization_id text, rule text,
    severity text, subject text, principal_id text, patient_id text, window_start timestamptz,
    window_end timestamptz, event_ids jsonb, details jsonb)
ON CONFLICT (alert_id) DO NOTHING
RETURNING alert_id
"""
UNRECORDED = """
SELECT alert_id, organization_id, rule, severity, subject, principal_id, patient_id,
       window_start, window_end, event_ids, details::text AS details, raised_at
FROM watch_alerts WHERE recorded_at IS NULL ORDER BY raised_at, alert_id LIMIT $1
"""
MARK_RECORDED = """
UPDATE watch_alerts SET recorded_at = now()
WHERE alert_id = ANY($1::uuid[]) AND recorded_at IS NULL
"""
