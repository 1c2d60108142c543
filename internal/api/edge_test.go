package api

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/internal/store"
)

// TestBadInputAtTheEdge: each input a fault sweep found answered 500 or
// accepted gets a 400 {code, message} naming the field, and leaves no row.
func TestBadInputAtTheEdge(t *testing.T) {
	e := newEnv(t, Config{MaxCPUCount: 8, MaxMemoryMB: 16384})
	tests := []struct {
		name, method, path string
		body               any
		mention            string
	}{
		{"allowOut not an address", "POST", "/v2/sandboxes",
			map[string]any{"templateID": "base", "network": map[string]any{"allowOut": []string{"not-an-ip"}}}, "not-an-ip"},
		{"denyOut out of range", "POST", "/v2/sandboxes",
			map[string]any{"templateID": "base", "network": map[string]any{"denyOut": []string{"999.1.1.1/33"}}}, "999.1.1.1/33"},
		{"denyOut host bits", "POST", "/v2/sandboxes",
			map[string]any{"templateID": "base", "network": map[string]any{"denyOut": []string{"10.0.0.1/8"}}}, "10.0.0.0/8"},
		{"negative timeout", "POST", "/v2/sandboxes", map[string]any{"templateID": "base", "timeout": -1}, "timeout"},
		{"garbage page token", "GET", "/v2/sandboxes?nextToken=garbage", nil, "nextToken"},
		{"template with 100000 CPUs", "POST", "/v3/templates", map[string]any{"name": "huge", "cpuCount": 100000}, "cpuCount"},
		{"template with 10^9 MB", "POST", "/v3/templates", map[string]any{"name": "huge", "memoryMB": 1000000000}, "memoryMB"},
		{"template with negative CPUs", "POST", "/v3/templates", map[string]any{"name": "huge", "cpuCount": -1}, "cpuCount"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := e.do(e.keyA, tt.method, tt.path, tt.body).errBody(t, http.StatusBadRequest)
			if !strings.Contains(msg, tt.mention) {
				t.Errorf("message %q does not mention %q", msg, tt.mention)
			}
		})
	}
	ctx := context.Background()
	rows, _, err := e.store.ListSandboxes(ctx, store.SandboxFilter{TeamID: e.teamA})
	if err != nil {
		t.Fatal(err)
	}
	for _, sb := range rows {
		t.Errorf("a refused create left sandbox %s in state %s", sb.ID, sb.State)
	}
	if _, err := e.store.ResolveTemplate(ctx, "huge", e.teamA); err == nil {
		t.Error("a refused template was recorded")
	}

	// Within the bounds is accepted.
	if r := e.do(e.keyA, "POST", "/v3/templates", map[string]any{"name": "fits", "cpuCount": 8, "memoryMB": 1024}); r.status != http.StatusAccepted {
		t.Errorf("a template within the bounds: got %d %s, want 202", r.status, r.body)
	}
	sb := e.create(e.keyA, map[string]any{"network": map[string]any{"allowOut": []string{"1.1.1.1", "8.8.8.0/24"}, "denyOut": []string{"0.0.0.0/0"}}})
	if d, status := e.info(e.keyA, sb.SandboxID); status != http.StatusOK || d.State != "running" {
		t.Errorf("a sandbox with valid rules: got %d, state %s", status, d.State)
	}
}

// TestCreateTimeoutZeroIsTheDefault: api/openapi.yaml says a create's
// timeout of 0 means the server's default; it used to expire the sandbox
// at once.
func TestCreateTimeoutZeroIsTheDefault(t *testing.T) {
	e := newEnv(t, Config{DefaultTimeout: 300 * time.Second})
	sb := e.create(e.keyA, map[string]any{"timeout": 0})
	d, _ := e.info(e.keyA, sb.SandboxID)
	if got := d.EndAt.Sub(d.StartedAt); got != 300*time.Second {
		t.Errorf("timeout 0 gave %v, want the default 300s", got)
	}
}
