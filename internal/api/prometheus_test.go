package api

import (
	"context"
	"fmt"
	"net/http/httptest"
	"testing"

	"github.com/cocoon-run/cocoon/internal/metrics"
	"github.com/cocoon-run/cocoon/internal/metrics/promtest"
	"github.com/cocoon-run/cocoon/internal/store"
)

// Debian's Prometheus scrapes the api's /metrics (the node is the fake):
// after 3 creates and 2 kills PromQL answers the counts and a create
// latency quantile. The e2e (tests/metrics) does the same against a real
// cocoon server.
func TestPrometheusScrape(t *testing.T) {
	reg := metrics.NewRegistry()
	e := newEnv(t, Config{LifecycleInterval: 1 << 40})
	st := store.Observed(e.store, metrics.NewStore(reg).Query)
	m := metrics.NewAPI(reg, func(ctx context.Context) (map[string]int, error) {
		counts, err := st.CountSandboxes(ctx)
		out := map[string]int{}
		for k, n := range counts {
			out[string(k)] = n
		}
		return out, err
	})
	e.store = st
	e.start(Config{LifecycleInterval: 1 << 40, Metrics: m})
	ms := httptest.NewServer(metrics.Handler(reg))
	t.Cleanup(ms.Close)
	prom := promtest.Start(t, ms.URL+"/metrics")

	var ids []string
	for range 3 {
		ids = append(ids, e.create(e.keyA, nil).SandboxID)
	}
	for _, id := range ids[:2] {
		if r := e.do(e.keyA, "DELETE", "/sandboxes/"+id, nil); r.status != 204 {
			t.Fatalf("kill: %d %s", r.status, r.body)
		}
	}
	for q, want := range map[string]float64{
		`sum(cocoon_sandbox_operation_duration_seconds_count{operation="create",result="ok",template="base"})`: 3,
		`sum(cocoon_sandbox_operation_duration_seconds_count{operation="kill",result="ok"})`:                   2,
		`cocoon_sandboxes{state="running"}`: 1,
		`cocoon_sandboxes{state="killed"}`:  2,
		`sum(cocoon_api_request_duration_seconds_count{route="POST /v2/sandboxes",code="201"})`: 3,
	} {
		prom.Eventually(q, func() (bool, string) {
			v := prom.Scalar(q)
			return v == want, fmt.Sprintf("%v, want %v", v, want)
		})
	}
	p50 := `histogram_quantile(0.5, sum by (le) (cocoon_sandbox_operation_duration_seconds_bucket{operation="create"}))`
	prom.Eventually(p50, func() (bool, string) {
		v, ok := prom.Query(p50)
		return ok && v > 0, fmt.Sprintf("%v (present %v)", v, ok)
	})
	if v := prom.Scalar(`sum(cocoon_store_query_duration_seconds_count{method="CreateSandbox"})`); v < 3 {
		t.Errorf("store CreateSandbox calls = %v, want ≥ 3", v)
	}
}
