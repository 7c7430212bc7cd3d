-- File expiry (OpenAI's expires_after): the Unix second at which a file is
-- deleted, 0 for never.
ALTER TABLE files ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0 CHECK (expires_at >= 0);
