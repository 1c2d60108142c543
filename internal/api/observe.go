package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"

	orchestratorv1 "github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1"
	"github.com/cocoon-run/cocoon/internal/store"
)

type metricJSON struct {
	Timestamp     time.Time `json:"timestamp"`
	TimestampUnix int64     `json:"timestampUnix"`
	CPUCount      int       `json:"cpuCount"`
	CPUUsedPct    float64   `json:"cpuUsedPct"`
	MemUsed       int64     `json:"memUsed"`
	MemTotal      int64     `json:"memTotal"`
	MemCache      int64     `json:"memCache"`
	DiskUsed      int64     `json:"diskUsed"`
	DiskTotal     int64     `json:"diskTotal"`
}

func metricOut(m store.Metric) metricJSON {
	return metricJSON{
		Timestamp: m.Timestamp.UTC(), TimestampUnix: m.Timestamp.Unix(),
		CPUCount: m.CPUCount, CPUUsedPct: m.CPUUsedPct,
		MemUsed: m.MemUsed, MemTotal: m.MemTotal, MemCache: m.MemCache,
		DiskUsed: m.DiskUsed, DiskTotal: m.DiskTotal,
	}
}

// unixParam reads an optional unix-seconds query parameter.
func unixParam(r *http.Request, name string) (time.Time, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return time.Time{}, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, errorf(http.StatusBadRequest, fmt.Sprintf("invalid %s: want unix seconds", name))
	}
	return time.Unix(n, 0), nil
}

func (s *Server) sandboxMetrics(w http.ResponseWriter, r *http.Request) error {
	sb, err := s.lookup(r.Context(), r.PathValue("sandboxID"))
	if err != nil {
		return err
	}
	start, err := unixParam(r, "start")
	if err != nil {
		return err
	}
	end, err := unixParam(r, "end")
	if err != nil {
		return err
	}
	if !end.IsZero() {
		end = end.Add(time.Second - 1) // the end second is inclusive
	}
	ms, err := s.store.Metrics(r.Context(), sb.ID, start, end)
	if err != nil {
		return fmt.Errorf("read metrics of %s: %w", sb.ID, err)
	}
	out := make([]metricJSON, 0, len(ms))
	for _, m := range ms {
		out = append(out, metricOut(m))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// sandboxesMetrics returns the latest sample of each named sandbox of the
// team; unknown or foreign IDs are left out.
func (s *Server) sandboxesMetrics(w http.ResponseWriter, r *http.Request) error {
	out := map[string]metricJSON{}
	since := s.now().Add(-3 * s.cfg.MetricsInterval)
	for _, v := range r.URL.Query()["sandbox_ids"] {
		for id := range strings.SplitSeq(v, ",") {
			if id = strings.TrimSpace(id); id == "" {
				continue
			}
			if _, err := s.lookup(r.Context(), id); err != nil {
				continue
			}
			ms, err := s.store.Metrics(r.Context(), id, since, time.Time{})
			if err != nil {
				return fmt.Errorf("read metrics of %s: %w", id, err)
			}
			if len(ms) > 0 {
				out[id] = metricOut(ms[len(ms)-1])
			}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"sandboxes": out})
	return nil
}

type logJSON struct {
	Timestamp time.Time `json:"timestamp"`
	Line      string    `json:"line"`
}

type logEntryJSON struct {
	Timestamp time.Time         `json:"timestamp"`
	Level     string            `json:"level"`
	Message   string            `json:"message"`
	Fields    map[string]string `json:"fields"`
	// line is the entry as the v1 logs API serves it: one JSON object
	// (E2B's CLI parses every line), with its level and logger.
	line string
}

// consoleEntry reads one console line: envd's JSON lines (slog: time,
// level, msg; zerolog: message) keep their level and fields; a line of
// slog's text format (older envds) has its level= read; any other line
// (the guest kernel, a runtime's own output) is at level info. ts is the
// time the node read the line, used when the line has none.
func consoleEntry(ts time.Time, line string) logEntryJSON {
	e := logEntryJSON{Timestamp: ts.UTC(), Level: "info", Message: line, Fields: map[string]string{"source": "console"}}
	var obj map[string]any
	if strings.HasPrefix(line, "{") && json.Unmarshal([]byte(line), &obj) == nil {
		e.Message = ""
		for k, v := range obj {
			str, ok := v.(string)
			if !ok {
				b, _ := json.Marshal(v)
				str = string(b)
			}
			switch k {
			case "level":
				e.Level = strings.ToLower(str)
			case "msg", "message":
				e.Message = str
			case "time":
				if t, err := time.Parse(time.RFC3339Nano, str); err == nil {
					e.Timestamp = t.UTC()
				}
			default:
				e.Fields[k] = str
			}
		}
		if _, ok := obj["level"]; !ok {
			obj["level"] = e.Level
			b, _ := json.Marshal(obj)
			line = string(b)
		}
		e.line = line
		return e
	}
	if lvl, ok := textLevel(line); ok {
		e.Level = lvl
	}
	b, _ := json.Marshal(map[string]string{"level": e.Level, "logger": "console", "msg": line})
	e.line = string(b)
	return e
}

// textLevel finds slog's text-format level (" level=WARN ") in a line.
func textLevel(line string) (string, bool) {
	i := strings.Index(line, "level=")
	if i < 0 || (i > 0 && line[i-1] != ' ') {
		return "", false
	}
	v := line[i+len("level="):]
	if j := strings.IndexByte(v, ' '); j >= 0 {
		v = v[:j]
	}
	switch v = strings.ToLower(v); v {
	case "debug", "info", "warn", "error":
		return v, true
	}
	return "", false
}

// consoleLines reads the console log of a sandbox from its node. A paused
// sandbox has no live console: it has no lines.
func (s *Server) consoleLines(ctx context.Context, sb store.Sandbox) ([]logEntryJSON, error) {
	entries := []logEntryJSON{}
	if sb.NodeID == "" || sb.State == store.StatePaused {
		return entries, nil
	}
	client, err := s.nodes.Client(sb.NodeID)
	if err != nil {
		return nil, fmt.Errorf("logs of %s: %w", sb.ID, err)
	}
	nctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := client.Logs(nctx, connect.NewRequest(&orchestratorv1.LogsRequest{SandboxId: sb.ID}))
	if err != nil {
		return nil, nodeErr("read logs", err)
	}
	defer stream.Close()
	for stream.Receive() {
		for _, line := range stream.Msg().GetLines() {
			ts, msg := splitTimestamp(line, sb.StartedAt)
			entries = append(entries, consoleEntry(ts, msg))
		}
	}
	if err := stream.Err(); err != nil {
		return nil, nodeErr("read logs", err)
	}
	return entries, nil
}

// splitTimestamp takes a leading RFC 3339 timestamp off a console line when
// there is one; otherwise the line is dated def.
func splitTimestamp(line string, def time.Time) (time.Time, string) {
	if i := strings.IndexByte(line, ' '); i > 0 {
		if t, err := time.Parse(time.RFC3339Nano, line[:i]); err == nil {
			return t, line[i+1:]
		}
	}
	return def, line
}

// filterLogs keeps entries at or after startMs (unix ms, 0 = all), at most
// limit of them (0 = all).
func filterLogs(entries []logEntryJSON, startMs int64, limit int) []logEntryJSON {
	out := entries[:0:0]
	for _, e := range entries {
		if startMs > 0 && e.Timestamp.UnixMilli() < startMs {
			continue
		}
		out = append(out, e)
		if limit > 0 && len(out) == limit {
			break
		}
	}
	return out
}

func intParam(r *http.Request, name string) (int64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, errorf(http.StatusBadRequest, "invalid "+name)
	}
	return n, nil
}

// logsRequest reads what both log endpoints take: the sandbox, a position
// parameter (named pos), the limit, and the sandbox's console lines.
func (s *Server) logsRequest(r *http.Request, pos string) (entries []logEntryJSON, at, limit int64, err error) {
	sb, err := s.lookup(r.Context(), r.PathValue("sandboxID"))
	if err != nil {
		return nil, 0, 0, err
	}
	if at, err = intParam(r, pos); err != nil {
		return nil, 0, 0, err
	}
	if limit, err = intParam(r, "limit"); err != nil {
		return nil, 0, 0, err
	}
	entries, err = s.consoleLines(r.Context(), sb)
	return entries, at, limit, err
}

func (s *Server) sandboxLogs(w http.ResponseWriter, r *http.Request) error {
	entries, start, limit, err := s.logsRequest(r, "start")
	if err != nil {
		return err
	}
	entries = filterLogs(entries, start, int(limit))
	logs := make([]logJSON, 0, len(entries))
	for _, e := range entries {
		logs = append(logs, logJSON{Timestamp: e.Timestamp, Line: e.line})
	}
	writeJSON(w, http.StatusOK, map[string]any{"logs": logs, "logEntries": entries})
	return nil
}

func (s *Server) sandboxLogsV2(w http.ResponseWriter, r *http.Request) error {
	entries, cursor, limit, err := s.logsRequest(r, "cursor")
	if err != nil {
		return err
	}
	if search := r.URL.Query().Get("search"); search != "" {
		kept := entries[:0]
		for _, e := range entries {
			if strings.Contains(e.Message, search) {
				kept = append(kept, e)
			}
		}
		entries = kept
	}
	if r.URL.Query().Get("direction") == "backward" {
		for i, j := 0, len(entries)-1; i < j; i, j = i+1, j-1 {
			entries[i], entries[j] = entries[j], entries[i]
		}
		if cursor > 0 {
			kept := entries[:0]
			for _, e := range entries {
				if e.Timestamp.UnixMilli() <= cursor {
					kept = append(kept, e)
				}
			}
			entries = kept
		}
		if limit > 0 && int(limit) < len(entries) {
			entries = entries[:limit]
		}
	} else {
		entries = filterLogs(entries, cursor, int(limit))
	}
	writeJSON(w, http.StatusOK, map[string]any{"logs": entries})
	return nil
}
