-- Retention: a job's loss on its retention set before and after training
-- (-1 until measured), the measure of what fine-tuning made the model forget.
ALTER TABLE jobs ADD COLUMN retention_loss_before REAL NOT NULL DEFAULT -1;
ALTER TABLE jobs ADD COLUMN retention_loss_after REAL NOT NULL DEFAULT -1;
