-- Servable fine-tuned models: adapters and full models produced by jobs or
-- imported over the API. The base model is not stored (it is the server's
-- --model). Deleting a row unpublishes the model; its job keeps its record.
CREATE TABLE models (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,          -- the model name requests use
    kind       TEXT NOT NULL,                 -- 'adapter' or 'full'
    parent     TEXT NOT NULL,                 -- the base model id
    owned_by   TEXT NOT NULL,
    path       TEXT NOT NULL,                 -- its directory
    job_id     TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
);
