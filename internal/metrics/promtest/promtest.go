// Package promtest runs Debian's prometheus for tests: it scrapes one
// target every 500 ms and answers PromQL over its HTTP API.
package promtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

var errNotReady = errors.New("prometheus is not ready")

// Server is a running prometheus.
type Server struct {
	URL string
	t   *testing.T
}

// Start runs prometheus scraping target (a /metrics URL) until the test
// ends. It fails the test when prometheus is not installed
// (scripts/setup.sh installs it).
func Start(t *testing.T, target string) *Server {
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
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
			if len(b) > 2000 {
				b = b[len(b)-2000:]
			}
			t.Logf("prometheus log (tail):\n%s", b)
		}
	})
	s := &Server{URL: "http://" + addr, t: t}
	s.Eventually("the first scrape", func() (bool, string) {
		v, ok := s.Query(`up{job="cocoon"}`)
		return ok && v == 1, fmt.Sprintf("up=%v (present %v)", v, ok)
	})
	return s
}

// QueryErr runs an instant query; it returns the first sample's value
// (ok false without one) or Prometheus's error.
func (s *Server) QueryErr(q string) (v float64, ok bool, err error) {
	resp, err := http.Get(s.URL + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusServiceUnavailable {
		return 0, false, errNotReady // starting: not an answer yet
	}
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
		return 0, false, err
	}
	if r.Status != "success" {
		return 0, false, fmt.Errorf("prometheus: %s", r.Error)
	}
	if len(r.Data.Result) == 0 {
		return 0, false, nil
	}
	str, _ := r.Data.Result[0].Value[1].(string)
	v, err = strconv.ParseFloat(str, 64)
	return v, err == nil, nil
}

// Query is QueryErr with a failed request counting as no sample (it is
// not up yet) and a PromQL error failing the test.
func (s *Server) Query(q string) (float64, bool) {
	v, ok, err := s.QueryErr(q)
	if err != nil {
		var netErr *url.Error
		if !errors.As(err, &netErr) && !errors.Is(err, errNotReady) {
			s.t.Fatalf("query %s: %v", q, err)
		}
	}
	return v, ok
}

// Scalar is Query with 0 for no sample.
func (s *Server) Scalar(q string) float64 {
	v, _ := s.Query(q)
	return v
}

// Eventually polls cond every 250 ms, for up to a minute (prometheus
// scrapes every 500 ms), until it holds.
func (s *Server) Eventually(what string, cond func() (bool, string)) {
	s.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ok, got := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s: still %s after a minute", what, got)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
