-- Uploaded files: one row per stored blob under <data-dir>/files/<id>.
-- seq is the rowid: insertion order, never reused (AUTOINCREMENT), so list
-- pagination by seq stays stable across deletes. The length checks mirror the
-- fixed-size fields of storage_file (storage/storage.h).
CREATE TABLE files (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE CHECK (length(id) BETWEEN 1 AND 63),
    filename       TEXT NOT NULL CHECK (length(CAST(filename AS BLOB)) < 256),
    purpose        TEXT NOT NULL CHECK (length(CAST(purpose AS BLOB)) BETWEEN 1 AND 31),
    status         TEXT NOT NULL CHECK (length(CAST(status AS BLOB)) BETWEEN 1 AND 15),
    status_details TEXT NOT NULL DEFAULT '' CHECK (length(CAST(status_details AS BLOB)) < 512),
    bytes          INTEGER NOT NULL CHECK (bytes >= 0),
    created_at     INTEGER NOT NULL,
    n_examples     INTEGER NOT NULL DEFAULT 0 CHECK (n_examples >= 0),
    n_tokens       INTEGER NOT NULL DEFAULT 0 CHECK (n_tokens >= 0)
);
CREATE INDEX files_purpose_seq ON files(purpose, seq);
