-- Fine-tuning jobs, their events and their checkpoints. seq is insertion
-- order (never reused) for stable pagination. JSON columns (metadata,
-- hyperparameters, data, metrics) are opaque text to storage.
CREATE TABLE jobs (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
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
    created_at        INTEGER NOT NULL,
    started_at        INTEGER NOT NULL DEFAULT 0,
    finished_at       INTEGER NOT NULL DEFAULT 0,
    estimated_finish  INTEGER NOT NULL DEFAULT 0,
    seed              INTEGER NOT NULL DEFAULT 0,
    trained_tokens    INTEGER NOT NULL DEFAULT 0,
    step              INTEGER NOT NULL DEFAULT 0,
    total_steps       INTEGER NOT NULL DEFAULT 0,
    trainable_params  INTEGER NOT NULL DEFAULT 0,
    total_params      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_status_seq ON jobs(status, seq);
CREATE INDEX jobs_model ON jobs(fine_tuned_model);

CREATE TABLE job_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    job_id     TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    level      TEXT NOT NULL,
    type       TEXT NOT NULL,
    message    TEXT NOT NULL,
    data       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX job_events_job ON job_events(job_id, seq);

CREATE TABLE job_checkpoints (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    job_id     TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    step       INTEGER NOT NULL,
    metrics    TEXT NOT NULL DEFAULT '',
    fine_tuned_model_checkpoint TEXT NOT NULL,
    path       TEXT NOT NULL
);
CREATE INDEX job_checkpoints_job ON job_checkpoints(job_id, seq);
CREATE INDEX job_checkpoints_model ON job_checkpoints(fine_tuned_model_checkpoint);
