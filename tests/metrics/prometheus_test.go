// Package metrics_test checks Cocoon's /metrics with a real Prometheus
// (Debian's package): it scrapes a running `cocoon server`, and after a few
// creates and kills PromQL answers the counts and a latency quantile.
//
// It runs against a server started by the caller (scripts/e2e-server.sh,
// gvisor:sqlite): COCOON_METRICS_E2E=1, E2B_API_URL and E2B_API_KEY name
// the api, COCOON_METRICS_URL its /metrics.
package metrics_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"testing"

	"github.com/cocoon-run/cocoon/deploy/monitoring"
	"github.com/cocoon-run/cocoon/internal/metrics/promtest"
)

type env struct {
	api, key, metrics string
}

func setup(t *testing.T) env {
	t.Helper()
	if os.Getenv("COCOON_METRICS_E2E") == "" {
		t.Skip("COCOON_METRICS_E2E is not set: run by scripts/e2e-server.sh against a running cocoon server")
	}
	e := env{api: os.Getenv("E2B_API_URL"), key: os.Getenv("E2B_API_KEY"), metrics: os.Getenv("COCOON_METRICS_URL")}
	if e.api == "" || e.key == "" || e.metrics == "" {
		t.Fatal("E2B_API_URL, E2B_API_KEY and COCOON_METRICS_URL are required")
	}
	return e
}

// call does one api request and decodes its JSON answer into out (if not nil).
func (e env) call(t *testing.T, method, path string, body any, want int, out any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, e.api+path, rd)
	req.Header.Set("X-API-Key", e.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %s: %s", method, path, resp.Status, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
	}
}

func TestPrometheusScrapesCounts(t *testing.T) {
	e := setup(t)
	prom := promtest.Start(t, e.metrics)
	const (
		creates = `sum(cocoon_sandbox_operation_duration_seconds_count{operation="create",result="ok"})`
		kills   = `sum(cocoon_sandbox_operation_duration_seconds_count{operation="kill",result="ok"})`
		running = `sum(cocoon_sandboxes{state="running"})`
		node    = `sum(cocoon_node_operation_duration_seconds_count{operation="create",result="ok"})`
	)
	// The server may have served other tests: counts are compared with
	// what Prometheus saw before.
	c0, k0, r0, n0 := prom.Scalar(creates), prom.Scalar(kills), prom.Scalar(running), prom.Scalar(node)
	var ids []string
	for range 3 {
		var sb struct {
			SandboxID string `json:"sandboxID"`
		}
		e.call(t, "POST", "/sandboxes", map[string]any{"templateID": "base", "timeout": 120}, http.StatusCreated, &sb)
		ids = append(ids, sb.SandboxID)
	}
	t.Cleanup(func() {
		for _, id := range ids {
			req, _ := http.NewRequest("DELETE", e.api+"/sandboxes/"+id, nil)
			req.Header.Set("X-API-Key", e.key)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}
	})
	for _, id := range ids[:2] {
		e.call(t, "DELETE", "/sandboxes/"+id, nil, http.StatusNoContent, nil)
	}
	for _, c := range []struct {
		q    string
		want float64
	}{{creates, c0 + 3}, {kills, k0 + 2}, {running, r0 + 1}, {node, n0 + 3}} {
		prom.Eventually(c.q, func() (bool, string) {
			v := prom.Scalar(c.q)
			return v == c.want, fmt.Sprintf("%v, want %v", v, c.want)
		})
	}
	// The latency histogram has buckets: its median is a positive duration.
	p50 := `histogram_quantile(0.5, sum by (le) (cocoon_sandbox_operation_duration_seconds_bucket{operation="create"}))`
	prom.Eventually(p50, func() (bool, string) {
		v, ok := prom.Query(p50)
		return ok && v > 0 && v < 60, fmt.Sprintf("%v (present %v)", v, ok)
	})
	// Bounded labels: no series names a sandbox.
	resp, err := http.Get(e.metrics)
	if err != nil {
		t.Fatal(err)
	}
	text, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, id := range ids {
		if bytes.Contains(text, []byte(id)) {
			t.Errorf("/metrics names sandbox %s", id)
		}
	}
	// Every expression of the dashboard and the alert rules is valid
	// PromQL and queries metrics this server exports.
	exprs, err := monitoring.Exprs()
	if err != nil {
		t.Fatal(err)
	}
	for _, ex := range exprs {
		if _, _, err := prom.QueryErr(ex); err != nil {
			t.Errorf("%q: %v", ex, err)
		}
		for _, name := range monitoring.MetricNames(ex) {
			if name != "up" && !bytes.Contains(text, []byte("# TYPE "+name+" ")) {
				t.Errorf("%q queries %s, which /metrics does not export", ex, name)
			}
		}
	}
	v, _ := prom.Query(p50)
	t.Logf("create p50 from the histogram: %.3f s; go_goroutines=%v, store GetSandbox calls=%v", v,
		prom.Scalar(`go_goroutines{job="cocoon"}`),
		prom.Scalar(`sum(cocoon_store_query_duration_seconds_count{method="GetSandbox"})`))
}
