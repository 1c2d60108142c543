package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Store holds the store's query latency (see store.Observed).
type Store struct {
	queries *prometheus.HistogramVec
}

// NewStore registers the store's collectors on reg.
func NewStore(reg prometheus.Registerer) *Store {
	m := &Store{queries: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "cocoon_store_query_duration_seconds",
		Help:    "Duration of store calls by method and result.",
		Buckets: fastBuckets,
	}, []string{"method", "result"})}
	reg.MustRegister(m.queries)
	return m
}

// Query records one store call; it has the signature of store.Observer.
func (m *Store) Query(method string, start time.Time, err error) {
	if m == nil {
		return
	}
	m.queries.WithLabelValues(method, result(err)).Observe(time.Since(start).Seconds())
}
