// Package monitoring holds Cocoon's Grafana dashboard and Prometheus alert
// rules (grafana-dashboard.json, alerts.yml), embedded, and reads the PromQL
// expressions they query, for the tests that check each names a metric
// Cocoon exports (internal/metrics, tests/metrics).
package monitoring

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
)

// Dashboard is the Grafana dashboard (JSON model); Alerts the Prometheus
// rule file.
var (
	//go:embed grafana-dashboard.json
	Dashboard []byte
	//go:embed alerts.yml
	Alerts []byte
)

// Exprs returns every PromQL expression of the dashboard and the rules.
func Exprs() ([]string, error) {
	var dash struct {
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(Dashboard, &dash); err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	var out []string
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	// The rules' "expr:" values, one line or a "|" block.
	lines := strings.Split(string(Alerts), "\n")
	for i := 0; i < len(lines); i++ {
		rest, ok := strings.CutPrefix(strings.TrimSpace(lines[i]), "expr:")
		if !ok {
			continue
		}
		if rest = strings.TrimSpace(rest); rest == "|" {
			indent := len(lines[i]) - len(strings.TrimLeft(lines[i], " ")) + 2
			var b strings.Builder
			for i+1 < len(lines) && len(lines[i+1]) > indent && strings.TrimSpace(lines[i+1][:indent]) == "" {
				i++
				b.WriteString(lines[i] + "\n")
			}
			rest = b.String()
		}
		out = append(out, rest)
	}
	return out, nil
}

var (
	strLit   = regexp.MustCompile(`"[^"]*"`)
	grouping = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	ident    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	histo    = regexp.MustCompile(`_(bucket|count|sum)$`)
)

// MetricNames returns the metrics expr queries: its identifiers naming
// Cocoon's (cocoon_…, a histogram's _bucket, _count and _sum taken off),
// Go's (go_…), the process's (process_…) or up.
func MetricNames(expr string) []string {
	expr = grouping.ReplaceAllString(strLit.ReplaceAllString(expr, `""`), "")
	var out []string
	for _, id := range ident.FindAllString(expr, -1) {
		switch {
		case strings.HasPrefix(id, "cocoon_"):
			out = append(out, histo.ReplaceAllString(id, ""))
		case strings.HasPrefix(id, "go_"), strings.HasPrefix(id, "process_"), id == "up":
			out = append(out, id)
		}
	}
	return out
}
