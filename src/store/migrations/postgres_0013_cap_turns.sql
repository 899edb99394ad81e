-- When a node's place in line for a unit of the global cap began (epoch ms): the claim
-- that started its wait, or the last one that gave it a unit or in which its own end
-- freed one. Among waiting nodes holding equally few units, the one waiting longest
-- takes the next turn. See src/store/cap_share.rs.
ALTER TABLE nodes ADD COLUMN cap_wait_since bigint;
