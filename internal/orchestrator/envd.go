package orchestrator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// EnvdPort is where envd listens inside every sandbox.
const EnvdPort = 49983

// envdClient talks to the envd of one sandbox.
type envdClient struct {
	base  string
	token string
	http  *http.Client
}

// newEnvdHTTP is the orchestrator's one HTTP client for every envd. No
// keep-alives: a sandbox's address goes to another sandbox after it, and a
// pause must find no connection of ours open.
func newEnvdHTTP() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:       (&net.Dialer{Timeout: time.Second}).DialContext,
		DisableKeepAlives: true,
	}}
}

func (o *Orchestrator) envd(addr, token string) *envdClient {
	return &envdClient{
		base:  "http://" + net.JoinHostPort(addr, fmt.Sprint(EnvdPort)),
		token: token,
		http:  o.envdHTTP,
	}
}

// Metrics is what envd's GET /metrics reports.
type Metrics struct {
	Timestamp  int64   `json:"ts"`
	CPUCount   uint32  `json:"cpu_count"`
	CPUUsedPct float64 `json:"cpu_used_pct"`
	MemTotal   uint64  `json:"mem_total"`
	MemUsed    uint64  `json:"mem_used"`
	DiskUsed   uint64  `json:"disk_used"`
	DiskTotal  uint64  `json:"disk_total"`
}

func (c *envdClient) metrics(ctx context.Context) (Metrics, error) {
	var m Metrics
	resp, err := c.do(ctx, http.MethodGet, "/metrics", nil)
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return m, fmt.Errorf("envd /metrics: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		return m, fmt.Errorf("decode envd metrics: %w", err)
	}
	return m, nil
}

func (c *envdClient) do(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("X-Access-Token", c.token)
	}
	return c.http.Do(req)
}

// Metrics samples a running sandbox's envd.
func (o *Orchestrator) Metrics(ctx context.Context, id string) (Metrics, error) {
	sb, err := o.Get(ctx, id)
	if err != nil {
		return Metrics{}, err
	}
	if sb.State != StateRunning {
		return Metrics{}, fmt.Errorf("metrics of a %s sandbox: %w", sb.State, ErrState)
	}
	return o.envd(sb.Address, sb.AccessToken).metrics(ctx)
}
