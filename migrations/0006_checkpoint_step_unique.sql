-- One checkpoint per job and step. A crash between recording a checkpoint
-- and moving the job's resume pointer used to let a resumed job record the
-- same step twice; the two now commit together (storage_checkpoint_commit)
-- and the index makes a second row for a step impossible. Duplicates left by
-- older versions keep their first row.
DELETE FROM job_checkpoints
 WHERE seq NOT IN (SELECT MIN(seq) FROM job_checkpoints GROUP BY job_id, step);
CREATE UNIQUE INDEX job_checkpoints_step ON job_checkpoints(job_id, step);
