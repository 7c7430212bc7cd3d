-- PostgreSQL's text of 0001_files.sql (see there): seq is an identity
-- column (insertion order, never reused), integers are BIGINT, and byte
-- lengths are octet_length. Migrations with no file here run as written.
CREATE TABLE files (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE CHECK (length(id) BETWEEN 1 AND 63),
    filename       TEXT NOT NULL CHECK (octet_length(filename) < 256),
    purpose        TEXT NOT NULL CHECK (octet_length(purpose) BETWEEN 1 AND 31),
    status         TEXT NOT NULL CHECK (octet_length(status) BETWEEN 1 AND 15),
    status_details TEXT NOT NULL DEFAULT '' CHECK (octet_length(status_details) < 512),
    bytes          BIGINT NOT NULL CHECK (bytes >= 0),
    created_at     BIGINT NOT NULL,
    n_examples     BIGINT NOT NULL DEFAULT 0 CHECK (n_examples >= 0),
    n_tokens       BIGINT NOT NULL DEFAULT 0 CHECK (n_tokens >= 0)
);
CREATE INDEX files_purpose_seq ON files(purpose, seq);
