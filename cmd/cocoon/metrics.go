package main

import (
	"context"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/cocoon-run/cocoon/internal/control/fleet"
	"github.com/cocoon-run/cocoon/internal/metrics"
	"github.com/cocoon-run/cocoon/internal/orchestrator"
	"github.com/cocoon-run/cocoon/internal/store"
)

// defaultMetricsAddr is --metrics-addr's default.
const defaultMetricsAddr = "127.0.0.1:3002"

// registerMetrics adds --metrics-addr once per command.
func (f *serverFlags) registerMetrics(cmd *cobra.Command) {
	if cmd.Flags().Lookup("metrics-addr") != nil {
		return
	}
	cmd.Flags().StringVar(&f.metricsAddr, "metrics-addr", envOr("COCOON_METRICS_ADDR", defaultMetricsAddr),
		`address of Prometheus' /metrics, a listener of its own without auth (loopback by default; "" turns metrics off)`)
}

// metricsRegistry is the process's registry, nil when metrics are off.
func (f *serverFlags) metricsRegistry() *prometheus.Registry {
	if f.metricsAddr == "" {
		return nil
	}
	return metrics.NewRegistry()
}

// metricsHandler serves /metrics only.
func metricsHandler(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(reg))
	return mux
}

// nodeMetrics registers the node's collectors; o is read at each scrape
// (the metrics listener starts after it is set).
func nodeMetrics(reg *prometheus.Registry, dataDir string, o **orchestrator.Orchestrator) *metrics.Node {
	if reg == nil {
		return nil
	}
	return metrics.NewNode(reg, func(ctx context.Context) metrics.NodeStats {
		return nodeStats(ctx, *o, dataDir)
	}, dataDir)
}

func nodeStats(ctx context.Context, o *orchestrator.Orchestrator, dataDir string) metrics.NodeStats {
	s := metrics.NodeStats{Sandboxes: map[[2]string]int{}}
	if o == nil {
		return s
	}
	for _, sb := range o.List(ctx) {
		s.Sandboxes[[2]string{sb.Runtime, string(sb.State)}]++
	}
	s.WarmPool = o.WarmSizes()
	l := o.Load(ctx)
	s.UsedVCPUs, s.UsedMemoryMB = l.UsedVCPUs, l.UsedMemoryMB
	if vcpus, mem, _, err := fleet.HostCapacity(dataDir); err == nil {
		s.VCPUs, s.MemoryMB = vcpus, mem
	}
	return s
}

// apiMetrics registers the api's and the store's collectors and returns
// the api's, with st observed.
func apiMetrics(reg *prometheus.Registry, st store.Store) (*metrics.API, store.Store) {
	if reg == nil {
		return nil, st
	}
	st = store.Observed(st, metrics.NewStore(reg).Query)
	m := metrics.NewAPI(reg, func(ctx context.Context) (map[string]int, error) {
		counts, err := st.CountSandboxes(ctx)
		out := make(map[string]int, len(counts))
		for state, n := range counts {
			out[string(state)] = n
		}
		return out, err
	})
	return m, st
}

// proxyMetrics registers the proxy's collectors.
func proxyMetrics(reg *prometheus.Registry) *metrics.Proxy {
	if reg == nil {
		return nil
	}
	return metrics.NewProxy(reg)
}
