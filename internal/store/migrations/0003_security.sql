-- A sandbox created with network.allowPublicTraffic = false: the proxy
-- demands its traffic access token on every port (issue 18). Existing
-- sandboxes stay public, as they were created.
ALTER TABLE sandboxes ADD COLUMN require_traffic_token BOOLEAN NOT NULL DEFAULT FALSE;
