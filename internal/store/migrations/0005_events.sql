-- Sandbox lifecycle events (issue 15): what E2B's /events/sandboxes serves
-- and its webhooks deliver. ts is unix microseconds; the api makes it
-- strictly increasing within a process, so (ts, id) orders a sandbox's
-- events as they happened.
CREATE TABLE sandbox_events (
    id          TEXT PRIMARY KEY,
    team_id     TEXT NOT NULL,
    sandbox_id  TEXT NOT NULL,
    type        TEXT NOT NULL,
    ts          BIGINT NOT NULL,
    template_id TEXT NOT NULL,
    build_id    TEXT NOT NULL,
    execution   TEXT NOT NULL,
    data        TEXT NOT NULL
);
CREATE INDEX sandbox_events_team_ts ON sandbox_events (team_id, ts);
CREATE INDEX sandbox_events_sandbox_ts ON sandbox_events (sandbox_id, ts);

-- A team's webhooks; secret is sealed like sandbox tokens (secrets.go).
CREATE TABLE webhooks (
    id         TEXT PRIMARY KEY,
    team_id    TEXT NOT NULL REFERENCES teams (id),
    name       TEXT NOT NULL,
    url        TEXT NOT NULL,
    enabled    BOOLEAN NOT NULL,
    events     TEXT NOT NULL,
    secret     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX webhooks_team ON webhooks (team_id);

-- The outbox: one row per (webhook, event) until delivered or given up.
-- A row survives restarts; next_at is when it may be tried (again).
CREATE TABLE webhook_deliveries (
    id         TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    ts         BIGINT NOT NULL,
    attempts   INTEGER NOT NULL,
    next_at    BIGINT NOT NULL,
    last_error TEXT NOT NULL
);
CREATE INDEX webhook_deliveries_webhook_ts ON webhook_deliveries (webhook_id, ts);
