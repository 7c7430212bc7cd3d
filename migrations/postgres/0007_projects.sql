-- PostgreSQL's text of 0007_projects.sql (see there). PostgreSQL changes a
-- table's unique key in place, so models keeps its rows and seq.
ALTER TABLE files ADD COLUMN project TEXT NOT NULL DEFAULT 'retune'
    CHECK (octet_length(project) BETWEEN 1 AND 63);
CREATE INDEX files_project_seq ON files(project, seq);
CREATE INDEX jobs_tenant_seq ON jobs(tenant, seq);

-- Model names are unique within a project, not across projects.
ALTER TABLE models DROP CONSTRAINT models_id_key;
ALTER TABLE models ADD CONSTRAINT models_owned_by_id_key UNIQUE (owned_by, id);
CREATE INDEX models_id ON models(id);

-- API keys managed by `retune keys`: only the SHA-256 of a secret is kept.
CREATE TABLE api_keys (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE CHECK (length(id) BETWEEN 1 AND 63),
    project    TEXT NOT NULL CHECK (octet_length(project) BETWEEN 1 AND 63),
    hash       TEXT NOT NULL UNIQUE CHECK (length(hash) = 64),
    prefix     TEXT NOT NULL CHECK (length(prefix) < 16),
    created_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL DEFAULT 0
);
