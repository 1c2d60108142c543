-- Cocoon schema v1. Portable between SQLite and PostgreSQL: times are BIGINT
-- unix microseconds (UTC), maps and lists are JSON in TEXT.

CREATE TABLE teams (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    team_id      TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT
);
CREATE INDEX api_keys_team ON api_keys (team_id);

-- Sandbox rows are never deleted (killed rows are tombstones), so an ID is
-- never reused. template_id has no foreign key: tombstones outlive templates.
CREATE TABLE sandboxes (
    id                    TEXT PRIMARY KEY,
    team_id               TEXT NOT NULL REFERENCES teams (id),
    node_id               TEXT NOT NULL,
    template_id           TEXT NOT NULL,
    build_id              TEXT NOT NULL,
    alias                 TEXT NOT NULL,
    runtime               TEXT NOT NULL,
    state                 TEXT NOT NULL,
    state_reason          TEXT NOT NULL,
    cpu_count             INTEGER NOT NULL,
    memory_mb             INTEGER NOT NULL,
    disk_mb               INTEGER NOT NULL,
    metadata              TEXT NOT NULL,
    env_vars              TEXT NOT NULL,
    envd_access_token     TEXT NOT NULL,
    traffic_access_token  TEXT NOT NULL,
    envd_version          TEXT NOT NULL,
    started_at            BIGINT NOT NULL,
    end_at                BIGINT NOT NULL,
    on_timeout            TEXT NOT NULL,
    auto_resume           BOOLEAN NOT NULL,
    allow_internet_access BOOLEAN NOT NULL,
    allow_out             TEXT NOT NULL,
    deny_out              TEXT NOT NULL,
    node_data             TEXT NOT NULL,
    snapshot_uri          TEXT NOT NULL,
    updated_at            BIGINT NOT NULL,
    version               BIGINT NOT NULL
);
CREATE INDEX sandboxes_team_started ON sandboxes (team_id, started_at, id);
CREATE INDEX sandboxes_state_end ON sandboxes (state, end_at);
CREATE INDEX sandboxes_node ON sandboxes (node_id);

CREATE TABLE templates (
    id         TEXT PRIMARY KEY,
    team_id    TEXT NOT NULL REFERENCES teams (id),
    name       TEXT NOT NULL,
    public     BOOLEAN NOT NULL,
    cpu_count  INTEGER NOT NULL,
    memory_mb  INTEGER NOT NULL,
    disk_mb    INTEGER NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX templates_team ON templates (team_id);

CREATE TABLE template_aliases (
    alias       TEXT PRIMARY KEY,
    template_id TEXT NOT NULL REFERENCES templates (id) ON DELETE CASCADE
);
CREATE INDEX template_aliases_template ON template_aliases (template_id);

CREATE TABLE template_builds (
    id           TEXT PRIMARY KEY,
    template_id  TEXT NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    status       TEXT NOT NULL,
    reason       TEXT NOT NULL,
    runtimes     TEXT NOT NULL,
    artifact_dir TEXT NOT NULL,
    spec         TEXT NOT NULL,
    envd_version TEXT NOT NULL,
    log_count    BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    finished_at  BIGINT
);
CREATE INDEX template_builds_template ON template_builds (template_id, status);

CREATE TABLE build_logs (
    build_id TEXT NOT NULL REFERENCES template_builds (id) ON DELETE CASCADE,
    seq      BIGINT NOT NULL,
    ts       BIGINT NOT NULL,
    level    TEXT NOT NULL,
    message  TEXT NOT NULL,
    step     TEXT NOT NULL,
    PRIMARY KEY (build_id, seq)
);

CREATE TABLE template_files (
    template_id TEXT NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    sha256      TEXT NOT NULL,
    path        TEXT NOT NULL,
    uploaded    BOOLEAN NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (template_id, sha256)
);

CREATE TABLE sandbox_metrics (
    sandbox_id   TEXT NOT NULL REFERENCES sandboxes (id),
    ts           BIGINT NOT NULL,
    cpu_count    INTEGER NOT NULL,
    cpu_used_pct DOUBLE PRECISION NOT NULL,
    mem_used     BIGINT NOT NULL,
    mem_total    BIGINT NOT NULL,
    mem_cache    BIGINT NOT NULL,
    disk_used    BIGINT NOT NULL,
    disk_total   BIGINT NOT NULL,
    PRIMARY KEY (sandbox_id, ts)
);
CREATE INDEX sandbox_metrics_ts ON sandbox_metrics (ts);
