-- A node that wants a unit of the global cap and finds none free says so here (epoch
-- ms of its last such claim; NULL: it does not wait). While another node waits, a
-- claim under the cap takes no more than its fair share. See src/store/cap_share.rs.
ALTER TABLE nodes ADD COLUMN cap_wait_at INTEGER;
