package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Every part's collectors fit on one registry (cocoon server has one) and
// show up once observed.
func TestOnePerProcess(t *testing.T) {
	reg := NewRegistry()
	api := NewAPI(reg, func(context.Context) (map[string]int, error) { return map[string]int{"running": 2}, nil })
	node := NewNode(reg, func(context.Context) NodeStats {
		return NodeStats{Sandboxes: map[[2]string]int{{"gvisor", "running"}: 2}, WarmPool: map[string]int{"gvisor": 1}, VCPUs: 4}
	}, t.TempDir())
	px := NewProxy(reg)
	st := NewStore(reg)
	api.Operation("create", "gvisor", "base", time.Now(), nil)
	api.Request("POST /sandboxes", 201, time.Millisecond)
	node.Operation("create", "gvisor", "base", time.Now(), errors.New("x"))
	node.Refill("gvisor", nil)
	px.Error("not_found")
	st.Query("GetSandbox", time.Now(), nil)
	for name, want := range map[string]int{
		"cocoon_sandbox_operation_duration_seconds": 1, "cocoon_sandboxes": 1, "cocoon_node_sandboxes": 1,
		"cocoon_warm_pool_size": 1, "cocoon_node_vcpus": 2, "cocoon_node_disk_bytes": 2, "cocoon_proxy_errors_total": 8,
		"cocoon_store_query_duration_seconds": 1, "go_goroutines": 1, "cocoon_api_request_duration_seconds": 1,
	} {
		n, err := testutil.GatherAndCount(reg, name)
		if err != nil || n != want {
			t.Errorf("%s: %d series (err %v), want %d", name, n, err, want)
		}
	}
}

// A nil set of metrics observes nothing and does not panic.
func TestNilIsOff(t *testing.T) {
	var (
		api  *API
		node *Node
		px   *Proxy
		st   *Store
	)
	api.Operation("create", "", "", time.Now(), nil)
	api.Request("", 200, 0)
	node.Operation("kill", "", "", time.Now(), nil)
	px.Error("dead")
	st.Query("x", time.Now(), nil)
	h := http.NotFoundHandler()
	if px.Handler(h) == nil || node.EnvdTransport(http.DefaultTransport) != http.DefaultTransport {
		t.Fatal("nil metrics must pass handlers through")
	}
}

func TestProxyCountsBytes(t *testing.T) {
	reg := NewRegistry()
	px := NewProxy(reg)
	h := px.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.WriteHeader(http.StatusAccepted)
		_, _ = w.Write(append(b, b...))
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("flush through the wrapper: %v", err)
		}
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/", strings.NewReader("hello")))
	if got := testutil.ToFloat64(px.bytes.WithLabelValues("in")); got != 5 {
		t.Errorf("bytes in = %v, want 5", got)
	}
	if got := testutil.ToFloat64(px.bytes.WithLabelValues("out")); got != 10 {
		t.Errorf("bytes out = %v, want 10", got)
	}
	if n, _ := testutil.GatherAndCount(reg, "cocoon_proxy_request_duration_seconds"); n != 1 {
		t.Errorf("request series = %d", n)
	}
	if !strings.Contains(scrape(t, reg), `code="2xx"`) {
		t.Error("no 2xx request")
	}
}

// scrape returns reg's exposition text.
func scrape(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	rec := httptest.NewRecorder()
	Handler(reg).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}
