-- The global cap as rows: one token per unit (slot 0 .. cap - 1). A claim under the cap
-- locks free tokens with SKIP LOCKED and gives each job it claims one, in the claim's
-- statement; the job's token is freed by this trigger in the transaction that stops it
-- running, whichever way it stops. Claimers lock different tokens, so they do not queue
-- on one lock held through each other's commit (which an advisory lock around a count
-- of running jobs did). See src/store/postgres/cap_tokens.rs.
ALTER TABLE jobs ADD COLUMN cap_slot bigint;

CREATE TABLE cap_tokens (
    slot    bigint PRIMARY KEY,
    -- The job holding it (its `seq`); NULL: free.
    job_seq bigint
);

CREATE FUNCTION runyard_cap_release() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE cap_tokens SET job_seq = NULL WHERE slot = OLD.cap_slot AND job_seq = OLD.seq;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_cap_release AFTER UPDATE OF status ON jobs FOR EACH ROW
    WHEN (OLD.cap_slot IS NOT NULL AND OLD.status = 'running' AND NEW.status <> 'running')
    EXECUTE FUNCTION runyard_cap_release();

-- A running job deleted with its run (an operator's delete) frees its token too.
CREATE TRIGGER jobs_cap_release_deleted AFTER DELETE ON jobs FOR EACH ROW
    WHEN (OLD.cap_slot IS NOT NULL AND OLD.status = 'running')
    EXECUTE FUNCTION runyard_cap_release();
