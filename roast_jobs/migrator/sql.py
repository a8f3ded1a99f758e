"""The migrator's statements on the application tables (the broker's are in
``broker.sql.jobs``: ``messages_for_move`` and ``delete_messages``).

A batch takes its jobs with ``FOR UPDATE SKIP LOCKED``: a legacy worker claiming at the
same moment, a Celery task marking its job RUNNING, a cancel, or a second migrator
holds other rows, and never waits on this one. Everything a batch writes to a job (its
backend, its Celery task id, or FAILED when it cannot run) and its ``JobMigrationStatus``
record are one statement, so the record exists exactly when the move happened.
"""

from __future__ import annotations

# Why a waiting legacy job cannot run on Celery (NULL: it can). :id_re is the task
# payload's id rule (payloads.ID_REGEX_SQL); the joins are the ones the run itself makes
# (runner.load_inputs): the latest document and agent versions. {source} yields waiting
# jobs' id, "evaluationId", "agentEvalBatchId" and "createdAt".
_CHECKED = """
    SELECT p.id, p."evaluationId" AS evaluation_id, p."agentEvalBatchId" AS batch_id,
           p."createdAt" AS created_at, v."extendedCapabilityId" AS capability,
           CASE
               WHEN p.id !~ :id_re OR p."evaluationId" !~ :id_re
                    OR p."agentEvalBatchId" !~ :id_re
                    OR greatest(length(p.id), length(p."evaluationId"),
                                length(p."agentEvalBatchId")) > :id_max
                   THEN 'invalid payload: an id is not 1-200 of [A-Za-z0-9_-]'
               WHEN e.id IS NULL THEN 'evaluation not found'
               WHEN d.id IS NULL THEN 'document ' || e."documentId" || ' has no version'
               WHEN v.id IS NULL THEN 'agent ' || e."agentId" || ' has no version'
           END AS reason
      FROM {source} p
      LEFT JOIN "Evaluation" e ON e.id = p."evaluationId"
      LEFT JOIN LATERAL (SELECT id FROM "DocumentVersion" WHERE "documentId" = e."documentId"
                          ORDER BY version DESC LIMIT 1) d ON true
      LEFT JOIN LATERAL (SELECT id, "extendedCapabilityId" FROM "AgentVersion"
                          WHERE "agentId" = e."agentId" ORDER BY version DESC LIMIT 1) v ON true
"""

_WAITING_LEGACY = """
    SELECT id, "evaluationId", "agentEvalBatchId", "createdAt" FROM "Job"
     WHERE status = 'PENDING' AND backend = 'legacy'
     ORDER BY "createdAt", id
     LIMIT :limit
"""

# One forward batch: the oldest waiting legacy jobs not locked by anyone, switched to
# Celery under a fresh task id (a job moved back and forth never reuses one: the old id
# may still have a result or a dead letter), or FAILED with the reason; one record each.
# Returns the batch in creation order, with the task id of each job moved. No CTE is
# joined to another: with stale statistics the planner guesses one row per CTE and
# nested-loops them (2,000 x 2,000 scans per batch); RETURNING carries what is needed.
FORWARD_BATCH = f"""
WITH picked AS MATERIALIZED ({_WAITING_LEGACY} FOR UPDATE SKIP LOCKED),
checked AS MATERIALIZED ({_CHECKED.format(source="picked")}),
done AS (
    -- One UPDATE for both fates: a second one (FROM checked, fewer rows) was planned as
    -- a hash join over the whole table.
    UPDATE "Job" j
       SET backend = CASE WHEN c.reason IS NULL THEN 'celery' ELSE j.backend END,
           "brokerJobId" = CASE WHEN c.reason IS NULL THEN gen_random_uuid()::text END,
           status = CASE WHEN c.reason IS NULL THEN j.status ELSE 'FAILED' END,
           error = CASE WHEN c.reason IS NULL THEN j.error
                        ELSE 'not migrated to celery: ' || c.reason END,
           "completedAt" = CASE WHEN c.reason IS NULL THEN j."completedAt"
                                ELSE CURRENT_TIMESTAMP END,
           "updatedAt" = CURRENT_TIMESTAMP
      FROM checked c
     WHERE j.id = c.id
    RETURNING j.id, c.evaluation_id, c.batch_id, c.created_at, c.capability, c.reason,
              j."brokerJobId" AS broker_job_id
),
recorded AS (
    INSERT INTO "JobMigrationStatus"
           (id, "jobId", "fromBackend", "toBackend", status, "brokerJobId", error, "runId",
            "createdAt")
    SELECT gen_random_uuid()::text, id, 'legacy', 'celery',
           CASE WHEN reason IS NULL THEN 'moved' ELSE 'failed' END,
           broker_job_id, reason, :run_id, CURRENT_TIMESTAMP
      FROM done
)
SELECT id, evaluation_id, batch_id, created_at, capability, reason, broker_job_id
  FROM done
 ORDER BY created_at, id
"""

# What a forward run would do, without locking or writing: (reason or NULL, count).
FORWARD_PREVIEW = f"""
WITH waiting AS ({_WAITING_LEGACY}),
checked AS ({_CHECKED.format(source="waiting")})
SELECT reason, count(*) FROM checked GROUP BY reason ORDER BY reason NULLS FIRST
"""

_WAITING_CELERY = """
    SELECT id, "brokerJobId", "createdAt" FROM "Job"
     WHERE status = 'PENDING' AND backend = 'celery'
       AND ("createdAt", id) > (CAST(:after_created AS timestamp(3)), CAST(:after_id AS text))
     ORDER BY "createdAt", id
     LIMIT :limit
"""

# The next waiting Celery jobs after the cursor, locked (SKIP LOCKED), in creation order;
# the cursor and the order come from Job_backend_pending_idx (backend, createdAt, id).
REVERSE_PICK = _WAITING_CELERY + " FOR UPDATE SKIP LOCKED"
# The same page read without locks (previews).
REVERSE_PAGE = _WAITING_CELERY

# Jobs whose messages were deleted (or that had none) back to the legacy table, one
# record each (the record keeps the task id the job had).
REVERSE_MOVE = """
WITH moved AS (
    UPDATE "Job" j SET backend = 'legacy', "brokerJobId" = NULL,
                       "updatedAt" = CURRENT_TIMESTAMP
      FROM unnest(CAST(:ids AS text[]), CAST(:brokers AS text[])) AS u(id, broker)
     WHERE j.id = u.id
    RETURNING j.id, u.broker
)
INSERT INTO "JobMigrationStatus"
       (id, "jobId", "fromBackend", "toBackend", status, "brokerJobId", error, "runId",
        "createdAt")
SELECT gen_random_uuid()::text, id, 'celery', 'legacy', 'moved', broker, NULL, :run_id,
       CURRENT_TIMESTAMP
  FROM moved
"""

# Jobs a reverse run leaves on Celery: (RUNNING, RUNNING or PENDING).
CELERY_ACTIVE = """
SELECT count(*) FILTER (WHERE status = 'RUNNING'), count(*)
  FROM "Job" WHERE backend = 'celery' AND status IN ('PENDING', 'RUNNING')
"""

WAITING_COUNT = """
SELECT count(*) FROM "Job" WHERE status = 'PENDING' AND backend = :backend
"""
