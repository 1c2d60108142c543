package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	goruntime "runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// AgentConfig configures a node's heartbeat to the control plane.
type AgentConfig struct {
	ControlURL string // base URL of an api replica (or its Service)
	NodeToken  string
	// Beat describes the node now (address, runtimes, capacity, load).
	Beat       func(ctx context.Context) (Heartbeat, error)
	Interval   time.Duration // <= 0 means HeartbeatInterval
	HTTPClient *http.Client
	Logger     *slog.Logger
}

// Agent heartbeats a node to the control plane.
type Agent struct{ cfg AgentConfig }

// NewAgent returns an agent; Run starts it.
func NewAgent(cfg AgentConfig) *Agent {
	if cfg.Interval <= 0 {
		cfg.Interval = HeartbeatInterval
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.ControlURL = strings.TrimRight(cfg.ControlURL, "/")
	return &Agent{cfg: cfg}
}

// Run heartbeats at once and then every Interval until ctx ends. A failed
// beat is logged (once per run of failures) and retried at the next tick.
func (a *Agent) Run(ctx context.Context) error {
	t := time.NewTicker(a.cfg.Interval)
	defer t.Stop()
	failing := false
	for {
		n, err := a.Beat(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil && !failing:
			a.cfg.Logger.WarnContext(ctx, "heartbeat to the control plane failed", "url", a.cfg.ControlURL, "err", err)
			failing = true
		case err == nil && failing:
			a.cfg.Logger.InfoContext(ctx, "heartbeat to the control plane works again", "state", n.State)
			failing = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Beat sends one heartbeat and returns the node as the registry has it.
func (a *Agent) Beat(ctx context.Context) (NodeJSON, error) {
	hb, err := a.cfg.Beat(ctx)
	if err != nil {
		return NodeJSON{}, fmt.Errorf("describe node: %w", err)
	}
	body, err := json.Marshal(hb)
	if err != nil {
		return NodeJSON{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.cfg.ControlURL+HeartbeatPath, bytes.NewReader(body))
	if err != nil {
		return NodeJSON{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+a.cfg.NodeToken)
	resp, err := a.cfg.HTTPClient.Do(req)
	if err != nil {
		return NodeJSON{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return NodeJSON{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return NodeJSON{}, fmt.Errorf("heartbeat: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	var n NodeJSON
	if err := json.Unmarshal(b, &n); err != nil {
		return NodeJSON{}, fmt.Errorf("heartbeat reply: %w", err)
	}
	return n, nil
}

// HostCapacity reads the host's CPUs, memory (MemTotal) and the disk of
// dataDir's file system, in MiB.
func HostCapacity(dataDir string) (vcpus int, memoryMB, diskMB int64, err error) {
	vcpus = goruntime.NumCPU()
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, 0, 0, fmt.Errorf("host memory: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, 0, 0, fmt.Errorf("host memory: %q: %w", line, err)
			}
			memoryMB = kb / 1024
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dataDir, &st); err != nil {
		return 0, 0, 0, fmt.Errorf("disk of %s: %w", dataDir, err)
	}
	diskMB = int64(st.Blocks) * int64(st.Bsize) >> 20
	return vcpus, memoryMB, diskMB, nil
}
