-- The fleet's node registry (issue 14): every orchestrator node heartbeats
-- its address, runtimes, capacity and load; the control plane places
-- sandboxes from it and marks a silent node lost. templates lists the
-- build IDs whose artifacts the node holds (placement's locality).
CREATE TABLE nodes (
    id             TEXT PRIMARY KEY,
    url            TEXT NOT NULL,
    runtimes       TEXT NOT NULL,
    state          TEXT NOT NULL,
    state_reason   TEXT NOT NULL,
    vcpus          INTEGER NOT NULL,
    memory_mb      BIGINT NOT NULL,
    disk_mb        BIGINT NOT NULL,
    used_vcpus     INTEGER NOT NULL,
    used_memory_mb BIGINT NOT NULL,
    used_disk_mb   BIGINT NOT NULL,
    sandboxes      INTEGER NOT NULL,
    warm           INTEGER NOT NULL,
    templates      TEXT NOT NULL,
    registered_at  BIGINT NOT NULL,
    heartbeat_at   BIGINT NOT NULL
);
CREATE INDEX nodes_state_heartbeat ON nodes (state, heartbeat_at);
