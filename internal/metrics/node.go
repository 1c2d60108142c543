package metrics

import (
	"context"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Node holds an orchestrator node's metrics.
type Node struct {
	ops     *prometheus.HistogramVec
	envd    *prometheus.HistogramVec
	refills *prometheus.CounterVec
}

// NodeStats is a node's state at one scrape.
type NodeStats struct {
	// Sandboxes by runtime and state (running, paused).
	Sandboxes map[[2]string]int
	// WarmPool is the ready prespawned sandboxes by runtime.
	WarmPool map[string]int
	// VCPUs and MemoryMB: what the node offers and what its running
	// sandboxes hold.
	VCPUs, UsedVCPUs       int
	MemoryMB, UsedMemoryMB int64
}

// NodeSource reports a node's state; the orchestrator implements it.
type NodeSource func(ctx context.Context) NodeStats

// NewNode registers a node's collectors on reg. src is asked at every
// scrape; dataDir is the file system whose space is reported.
func NewNode(reg prometheus.Registerer, src NodeSource, dataDir string) *Node {
	m := &Node{
		ops: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cocoon_node_operation_duration_seconds",
			Help:    "Duration of sandbox operations on the node (create, resume, pause, kill).",
			Buckets: opBuckets,
		}, []string{"operation", "runtime", "template", "result"}),
		envd: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cocoon_envd_request_duration_seconds",
			Help:    "Duration of the node's calls to envd inside sandboxes, by path and status code.",
			Buckets: fastBuckets,
		}, []string{"path", "code"}),
		refills: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cocoon_warm_pool_refills_total",
			Help: "Prespawns of the warm pool by runtime and result.",
		}, []string{"runtime", "result"}),
	}
	reg.MustRegister(m.ops, m.envd, m.refills)
	if src != nil {
		reg.MustRegister(newNodeCollector(src, dataDir))
	}
	return m
}

// Operation records one sandbox operation on the node.
func (m *Node) Operation(op, runtime, template string, start time.Time, err error) {
	if m == nil {
		return
	}
	m.ops.WithLabelValues(op, runtime, template, result(err)).Observe(time.Since(start).Seconds())
}

// Refill counts one prespawn of the warm pool.
func (m *Node) Refill(runtime string, err error) {
	if m == nil {
		return
	}
	m.refills.WithLabelValues(runtime, result(err)).Inc()
}

// EnvdTransport wraps rt so that every call to envd is timed by path (the
// paths envd serves are a fixed set). With a nil m it returns rt.
func (m *Node) EnvdTransport(rt http.RoundTripper) http.RoundTripper {
	if m == nil {
		return rt
	}
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		start := time.Now()
		resp, err := rt.RoundTrip(r)
		code := "error"
		if err == nil {
			code = strconv.Itoa(resp.StatusCode)
		}
		m.envd.WithLabelValues(envdPath(r.URL.Path), code).Observe(time.Since(start).Seconds())
		return resp, err
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// envdPath bounds the path label: envd's REST paths are few; Connect RPCs
// are named by their service and method.
func envdPath(p string) string {
	switch p {
	case "/health", "/init", "/metrics", "/envs", "/files":
		return p
	}
	if len(p) > 1 && len(p) < 80 && p[0] == '/' {
		// "/process.Process/Start" and the like.
		for _, c := range p[1:] {
			if !(c == '.' || c == '/' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
				return "other"
			}
		}
		return p
	}
	return "other"
}

type nodeCollector struct {
	src     NodeSource
	dataDir string

	sandboxes, warm, vcpus, memory, disk, load *prometheus.Desc
}

func newNodeCollector(src NodeSource, dataDir string) *nodeCollector {
	return &nodeCollector{
		src: src, dataDir: dataDir,
		sandboxes: prometheus.NewDesc("cocoon_node_sandboxes", "Sandboxes on this node by runtime and state.", []string{"runtime", "state"}, nil),
		warm:      prometheus.NewDesc("cocoon_warm_pool_size", "Prespawned sandboxes ready in the warm pool, by runtime.", []string{"runtime"}, nil),
		vcpus:     prometheus.NewDesc("cocoon_node_vcpus", "vCPUs of the node: its capacity (host CPUs) and those its running sandboxes hold.", []string{"kind"}, nil),
		memory:    prometheus.NewDesc("cocoon_node_memory_bytes", "Memory of the node: its capacity and what its running sandboxes hold.", []string{"kind"}, nil),
		disk:      prometheus.NewDesc("cocoon_node_disk_bytes", "Space of the data dir's file system: capacity and free.", []string{"kind"}, nil),
		load:      prometheus.NewDesc("cocoon_node_load1", "The host's one-minute load average.", nil, nil),
	}
}

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.sandboxes, c.warm, c.vcpus, c.memory, c.disk, c.load} {
		ch <- d
	}
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s := c.src(ctx)
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for k, n := range s.Sandboxes {
		gauge(c.sandboxes, float64(n), k[0], k[1])
	}
	for rt, n := range s.WarmPool {
		gauge(c.warm, float64(n), rt)
	}
	gauge(c.vcpus, float64(s.VCPUs), "capacity")
	gauge(c.vcpus, float64(s.UsedVCPUs), "used")
	gauge(c.memory, float64(s.MemoryMB<<20), "capacity")
	gauge(c.memory, float64(s.UsedMemoryMB<<20), "used")
	var fs syscall.Statfs_t
	if c.dataDir != "" && syscall.Statfs(c.dataDir, &fs) == nil {
		gauge(c.disk, float64(fs.Blocks*uint64(fs.Bsize)), "capacity")
		gauge(c.disk, float64(fs.Bavail*uint64(fs.Bsize)), "free")
	}
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) == nil {
		gauge(c.load, float64(si.Loads[0])/65536)
	}
}
