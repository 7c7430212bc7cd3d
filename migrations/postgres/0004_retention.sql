-- PostgreSQL's text of 0004_retention.sql (see there): REAL is 4 bytes in
-- PostgreSQL, 8 in SQLite; a C double needs DOUBLE PRECISION.
ALTER TABLE jobs ADD COLUMN retention_loss_before DOUBLE PRECISION NOT NULL DEFAULT -1;
ALTER TABLE jobs ADD COLUMN retention_loss_after DOUBLE PRECISION NOT NULL DEFAULT -1;
