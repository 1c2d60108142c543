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
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/deploy/monitoring"
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

// prometheus runs Debian's prometheus scraping target every 500 ms and
// returns its URL.
func startPrometheus(t *testing.T, target string) string {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus is not installed (scripts/setup.sh installs it)")
	}
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := fmt.Sprintf("global:\n  scrape_interval: 500ms\n  evaluation_interval: 500ms\nscrape_configs:\n  - job_name: cocoon\n    metrics_path: %s\n    static_configs:\n      - targets: [%q]\n", u.Path, u.Host)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
	logf, _ := os.Create(filepath.Join(dir, "prometheus.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
			t.Logf("prometheus log (tail):\n%s", tail(string(b), 2000))
		}
	})
	return "http://" + addr
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// queryErr runs an instant query and returns Prometheus's error, if any.
func queryErr(prom, q string) (int, error) {
	resp, err := http.Get(prom + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, err
	}
	if r.Status != "success" {
		return 0, fmt.Errorf("prometheus: %s", r.Error)
	}
	return resp.StatusCode, nil
}

// query runs an instant PromQL query; ok is false when it has no sample.
func query(t *testing.T, prom, q string) (v float64, ok bool) {
	t.Helper()
	resp, err := http.Get(prom + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return 0, false // not up yet
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatalf("query %s: %v", q, err)
	}
	if r.Status != "success" {
		t.Fatalf("query %s: %s", q, r.Error)
	}
	if len(r.Data.Result) == 0 {
		return 0, false
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	v, err = strconv.ParseFloat(s, 64)
	return v, err == nil
}

// eventually polls cond (every 250 ms, for up to a minute: Prometheus
// scrapes every 500 ms) until it holds.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ok, got := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %s after a minute", what, got)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// scalar is query with 0 for no sample.
func scalar(t *testing.T, prom, q string) float64 {
	v, _ := query(t, prom, q)
	return v
}

func TestPrometheusScrapesCounts(t *testing.T) {
	e := setup(t)
	prom := startPrometheus(t, e.metrics)
	eventually(t, "the first scrape", func() (bool, string) {
		v, ok := query(t, prom, `up{job="cocoon"}`)
		return ok && v == 1, fmt.Sprintf("up=%v (present %v)", v, ok)
	})
	const (
		creates = `sum(cocoon_sandbox_operation_duration_seconds_count{operation="create",result="ok"})`
		kills   = `sum(cocoon_sandbox_operation_duration_seconds_count{operation="kill",result="ok"})`
		running = `sum(cocoon_sandboxes{state="running"})`
		node    = `sum(cocoon_node_operation_duration_seconds_count{operation="create",result="ok"})`
	)
	// The server may have served other tests: counts are compared with
	// what Prometheus saw before.
	c0, k0, r0, n0 := scalar(t, prom, creates), scalar(t, prom, kills), scalar(t, prom, running), scalar(t, prom, node)
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
		eventually(t, c.q, func() (bool, string) {
			v := scalar(t, prom, c.q)
			return v == c.want, fmt.Sprintf("%v, want %v", v, c.want)
		})
	}
	// The latency histogram has buckets: its median is a positive duration.
	p50 := `histogram_quantile(0.5, sum by (le) (cocoon_sandbox_operation_duration_seconds_bucket{operation="create"}))`
	eventually(t, p50, func() (bool, string) {
		v, ok := query(t, prom, p50)
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
		if _, err := queryErr(prom, ex); err != nil {
			t.Errorf("%q: %v", ex, err)
		}
		for _, name := range monitoring.MetricNames(ex) {
			if name != "up" && !bytes.Contains(text, []byte("# TYPE "+name+" ")) {
				t.Errorf("%q queries %s, which /metrics does not export", ex, name)
			}
		}
	}
	v, _ := query(t, prom, p50)
	t.Logf("create p50 from the histogram: %.3f s; go_goroutines=%v, store GetSandbox calls=%v", v,
		scalar(t, prom, `go_goroutines{job="cocoon"}`),
		scalar(t, prom, `sum(cocoon_store_query_duration_seconds_count{method="GetSandbox"})`))
}
