-- Which replica claimed an update: a replica restarted on its DATA_DIR replays what its own
-- inbox had taken, and must tell its own claims (still to answer) from other replicas'.
ALTER TABLE processed_updates ADD COLUMN claimed_by TEXT;
