-- Projects (issue 13, tenants): every file, job and model belongs to the
-- project of the API key that created it and is invisible to the others.
-- The default project is 'retune' (no auth, keys without a project), so all
-- existing data moves there; jobs.tenant and models.owned_by already hold
-- the project (fine-tuned model names embed it, and stay valid).
-- (0007 is left to a parallel change; versions need only increase.)
ALTER TABLE files ADD COLUMN project TEXT NOT NULL DEFAULT 'retune'
    CHECK (length(CAST(project AS BLOB)) BETWEEN 1 AND 63);
CREATE INDEX files_project_seq ON files(project, seq);
CREATE INDEX jobs_tenant_seq ON jobs(tenant, seq);

-- Model names are unique within a project, not across projects: an
-- imported adapter's name must not tell another project that it is taken.
CREATE TABLE models_by_project (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL,                 -- the model name requests use
    kind       TEXT NOT NULL,                 -- 'adapter' or 'full'
    parent     TEXT NOT NULL,                 -- the base model id
    owned_by   TEXT NOT NULL,                 -- the project
    path       TEXT NOT NULL,                 -- its directory
    job_id     TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    UNIQUE (owned_by, id)
);
INSERT INTO models_by_project (seq, id, kind, parent, owned_by, path, job_id, created_at)
    SELECT seq, id, kind, parent, owned_by, path, job_id, created_at FROM models;
DROP TABLE models;
ALTER TABLE models_by_project RENAME TO models;
CREATE INDEX models_id ON models(id);

-- API keys managed by `retune keys`: only the SHA-256 of a secret is kept
-- (hex), with a short prefix of it so that people can tell keys apart.
-- A revoked key stays (revoked_at > 0) so that lists keep its history.
CREATE TABLE api_keys (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE CHECK (length(id) BETWEEN 1 AND 63),
    project    TEXT NOT NULL CHECK (length(CAST(project AS BLOB)) BETWEEN 1 AND 63),
    hash       TEXT NOT NULL UNIQUE CHECK (length(hash) = 64),
    prefix     TEXT NOT NULL CHECK (length(prefix) < 16),
    created_at INTEGER NOT NULL,
    revoked_at INTEGER NOT NULL DEFAULT 0
);
