-- PostgreSQL's text of 0005_file_expiry.sql (see there).
ALTER TABLE files ADD COLUMN expires_at BIGINT NOT NULL DEFAULT 0 CHECK (expires_at >= 0);
