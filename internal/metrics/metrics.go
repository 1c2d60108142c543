// Package metrics owns Cocoon's Prometheus metrics: their names, labels and
// buckets. Each part of Cocoon (api, node, proxy, store) gets a struct of
// collectors registered on the *prometheus.Registry it is given; there is no
// package-level state. A nil *API, *Node, *Proxy or *Store observes nothing,
// so a part built without metrics pays one nil check per observation.
//
// Labels are bounded: operation, runtime, template, result, route, state,
// kind. A sandbox ID is never a label (one series per sandbox would grow
// without end); per-sandbox figures are served by the E2B metrics API.
package metrics

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Result label values.
const (
	OK    = "ok"
	Error = "error"
)

// result is the result label of err.
func result(err error) string {
	if err != nil {
		return Error
	}
	return OK
}

// opBuckets spans a warm-pool create (≈ 30 ms) to a cold QEMU resume or a
// TCG boot (tens of seconds).
var opBuckets = []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// fastBuckets are for calls that take micro- to milliseconds (store
// queries, envd calls, API requests).
var fastBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5}

// NewRegistry returns a registry holding the Go runtime and process
// collectors, for one process's /metrics.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Handler serves reg in the Prometheus exposition format.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}

// API holds the control plane's metrics.
type API struct {
	ops      *prometheus.HistogramVec
	requests *prometheus.HistogramVec
	builds   *prometheus.HistogramVec
	events   *prometheus.CounterVec
	webhooks *prometheus.CounterVec
}

// SandboxCounter counts the sandboxes of the store by state, for the
// cocoon_sandboxes gauge (read at each scrape).
type SandboxCounter func(ctx context.Context) (map[string]int, error)

// NewAPI registers the api's collectors on reg. count, when not nil, is
// asked at every scrape for the sandboxes by state.
func NewAPI(reg prometheus.Registerer, count SandboxCounter) *API {
	m := &API{
		ops: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cocoon_sandbox_operation_duration_seconds",
			Help:    "Duration of sandbox operations through the API (create, resume, pause, kill), node RPC included.",
			Buckets: opBuckets,
		}, []string{"operation", "runtime", "template", "result"}),
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cocoon_api_request_duration_seconds",
			Help:    "Duration of REST API requests by route pattern and status code.",
			Buckets: fastBuckets,
		}, []string{"route", "code"}),
		builds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cocoon_template_build_duration_seconds",
			Help:    "Duration of template builds by result.",
			Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800},
		}, []string{"result"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cocoon_sandbox_events_total",
			Help: "Sandbox lifecycle events recorded, by type.",
		}, []string{"type"}),
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cocoon_webhook_deliveries_total",
			Help: "Webhook delivery attempts by result (ok, error).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.ops, m.requests, m.builds, m.events, m.webhooks)
	// Series with bounded labels start at zero, so that a scrape shows
	// them before the first build or delivery (and rate() sees the first).
	for _, r := range []string{OK, Error} {
		m.builds.WithLabelValues(r)
		m.webhooks.WithLabelValues(r)
	}
	if count != nil {
		reg.MustRegister(&sandboxCollector{count: count, desc: prometheus.NewDesc(
			"cocoon_sandboxes", "Sandboxes in the store by state.", []string{"state"}, nil)})
	}
	return m
}

// Operation records one sandbox operation that started at start.
func (m *API) Operation(op, runtime, template string, start time.Time, err error) {
	if m == nil {
		return
	}
	m.ops.WithLabelValues(op, runtime, template, result(err)).Observe(time.Since(start).Seconds())
}

// Request records one API request; route is the mux pattern ("" for an
// unknown path).
func (m *API) Request(route string, code int, d time.Duration) {
	if m == nil {
		return
	}
	if route == "" {
		route = "unmatched"
	}
	m.requests.WithLabelValues(route, codeLabel(code)).Observe(d.Seconds())
}

// Build records one finished template build.
func (m *API) Build(d time.Duration, err error) {
	if m == nil {
		return
	}
	m.builds.WithLabelValues(result(err)).Observe(d.Seconds())
}

// Event counts one lifecycle event of type typ.
func (m *API) Event(typ string) {
	if m == nil {
		return
	}
	m.events.WithLabelValues(typ).Inc()
}

// Webhook counts one delivery attempt.
func (m *API) Webhook(err error) {
	if m == nil {
		return
	}
	m.webhooks.WithLabelValues(result(err)).Inc()
}

type sandboxCollector struct {
	count SandboxCounter
	desc  *prometheus.Desc
}

func (c *sandboxCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *sandboxCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	counts, err := c.count(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for state, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), state)
	}
}

func codeLabel(code int) string {
	if code == 0 {
		code = http.StatusOK
	}
	return strconv.Itoa(code)
}
