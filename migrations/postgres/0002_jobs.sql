-- PostgreSQL's text of 0002_jobs.sql (see there), plus retune_json_string,
-- which job lists filter metadata with (SQLite's json_extract there).
CREATE TABLE jobs (
    seq               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                TEXT NOT NULL UNIQUE,
    model             TEXT NOT NULL,
    training_file     TEXT NOT NULL,
    validation_file   TEXT NOT NULL DEFAULT '',
    retention_file    TEXT NOT NULL DEFAULT '',
    status            TEXT NOT NULL,
    tenant            TEXT NOT NULL,
    suffix            TEXT NOT NULL DEFAULT '',
    fine_tuned_model  TEXT NOT NULL DEFAULT '',
    error_code        TEXT NOT NULL DEFAULT '',
    error_message     TEXT NOT NULL DEFAULT '',
    error_param       TEXT NOT NULL DEFAULT '',
    result_file       TEXT NOT NULL DEFAULT '',
    control           TEXT NOT NULL DEFAULT '',   -- '', 'cancel' or 'pause': asked of a running job
    checkpoint        TEXT NOT NULL DEFAULT '',   -- latest checkpoint directory
    metadata          TEXT NOT NULL DEFAULT '',
    hyperparameters   TEXT NOT NULL DEFAULT '',
    created_at        BIGINT NOT NULL,
    started_at        BIGINT NOT NULL DEFAULT 0,
    finished_at       BIGINT NOT NULL DEFAULT 0,
    estimated_finish  BIGINT NOT NULL DEFAULT 0,
    seed              BIGINT NOT NULL DEFAULT 0,
    trained_tokens    BIGINT NOT NULL DEFAULT 0,
    step              BIGINT NOT NULL DEFAULT 0,
    total_steps       BIGINT NOT NULL DEFAULT 0,
    trainable_params  BIGINT NOT NULL DEFAULT 0,
    total_params      BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_status_seq ON jobs(status, seq);
CREATE INDEX jobs_model ON jobs(fine_tuned_model);

CREATE TABLE job_events (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    job_id     TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    level      TEXT NOT NULL,
    type       TEXT NOT NULL,
    message    TEXT NOT NULL,
    data       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX job_events_job ON job_events(job_id, seq);

CREATE TABLE job_checkpoints (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    job_id     TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    step       BIGINT NOT NULL,
    metrics    TEXT NOT NULL DEFAULT '',
    fine_tuned_model_checkpoint TEXT NOT NULL,
    path       TEXT NOT NULL
);
CREATE INDEX job_checkpoints_job ON job_checkpoints(job_id, seq);
CREATE INDEX job_checkpoints_model ON job_checkpoints(fine_tuned_model_checkpoint);

-- The string member `key` of the JSON object in `doc`; NULL when doc is no
-- JSON object (metadata is opaque text to storage) or the member is missing
-- or not a string, as SQLite's json_extract(...) = text compares.
CREATE FUNCTION retune_json_string(doc TEXT, key TEXT) RETURNS TEXT
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    j JSONB;
BEGIN
    j := doc::JSONB;
    IF jsonb_typeof(j) = 'object' AND jsonb_typeof(j -> key) = 'string' THEN
        RETURN j ->> key;
    END IF;
    RETURN NULL;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;
