-- runyard schema v3 (PostgreSQL): durable per-pipeline state shared by every node.

-- One row per pipeline that was ever paused (more per-pipeline state may join it). A paused
-- pipeline's queued jobs are claimed by no node (the claim statement leaves it out);
-- triggers still queue runs; running jobs finish.
CREATE TABLE pipeline_state (
    pipeline    text PRIMARY KEY,
    paused      boolean NOT NULL DEFAULT false,
    paused_at   bigint,
    paused_by   text,
    updated_at  bigint NOT NULL
);
