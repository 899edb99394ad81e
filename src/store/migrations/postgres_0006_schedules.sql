-- runyard schema v6 (PostgreSQL): pipeline schedules.

-- The durable next-fire record of a scheduled pipeline: the schedule it was computed for
-- (`expr @ zone`) and the next tick (epoch ms). A node fires a tick with one conditional
-- write that advances it and queues the run, so one node fires each tick.
ALTER TABLE pipeline_state ADD COLUMN schedule_key text;
ALTER TABLE pipeline_state ADD COLUMN next_fire_at bigint;
-- The tick a scheduled run is for.
ALTER TABLE runs ADD COLUMN scheduled_for bigint;
