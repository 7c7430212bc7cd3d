-- PostgreSQL's text of 0003_models.sql (see there).
CREATE TABLE models (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,          -- the model name requests use
    kind       TEXT NOT NULL,                 -- 'adapter' or 'full'
    parent     TEXT NOT NULL,                 -- the base model id
    owned_by   TEXT NOT NULL,
    path       TEXT NOT NULL,                 -- its directory
    job_id     TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);
