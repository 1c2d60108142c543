package metrics

import (
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Proxy holds the sandbox proxy's metrics.
type Proxy struct {
	requests *prometheus.HistogramVec
	bytes    *prometheus.CounterVec
	errors   *prometheus.CounterVec
}

// NewProxy registers the proxy's collectors on reg.
func NewProxy(reg prometheus.Registerer) *Proxy {
	m := &Proxy{
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cocoon_proxy_request_duration_seconds",
			Help:    "Duration of proxied requests (until the response ends, streams included) by status class.",
			Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 30, 300},
		}, []string{"code"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cocoon_proxy_bytes_total",
			Help: "Bytes through the proxy: request bodies in, response bodies out.",
		}, []string{"direction"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cocoon_proxy_errors_total",
			Help: "Requests the proxy answered itself with an error, by kind (bad_route, limited, dead, not_found, paused, unreachable, upstream, denied).",
		}, []string{"kind"}),
	}
	reg.MustRegister(m.requests, m.bytes, m.errors)
	for _, k := range []string{"bad_route", "limited", "dead", "not_found", "paused", "unreachable", "upstream", "denied"} {
		m.errors.WithLabelValues(k)
	}
	m.bytes.WithLabelValues("in")
	m.bytes.WithLabelValues("out")
	return m
}

// Error counts one error of kind the proxy answered.
func (m *Proxy) Error(kind string) {
	if m == nil {
		return
	}
	m.errors.WithLabelValues(kind).Inc()
}

// Handler wraps h, the proxy, counting requests and bytes. The response
// writer passed on unwraps (http.ResponseController) to the server's, so
// flushes, hijacks and full duplex work as without it.
func (m *Proxy) Handler(h http.Handler) http.Handler {
	if m == nil {
		return h
	}
	in, out := m.bytes.WithLabelValues("in"), m.bytes.WithLabelValues("out")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		cw := &countingWriter{ResponseWriter: w}
		var body *countingBody
		if r.Body != nil && r.Body != http.NoBody {
			body = &countingBody{ReadCloser: r.Body}
			r.Body = body
		}
		defer func() {
			status := cw.status
			if status == 0 {
				status = http.StatusOK
			}
			m.requests.WithLabelValues(strconv.Itoa(status/100) + "xx").Observe(time.Since(start).Seconds())
			out.Add(float64(cw.n))
			if body != nil {
				in.Add(float64(body.n.Load()))
			}
		}()
		h.ServeHTTP(cw, r)
	})
}

type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (w *countingWriter) WriteHeader(status int) {
	if w.status == 0 || w.status < 200 {
		w.status = status
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *countingWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

// Flush is what httputil.ReverseProxy looks for through the controller too.
func (w *countingWriter) Flush() {
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

type countingBody struct {
	io.ReadCloser
	n atomic.Int64 // read by the transport's goroutine
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
