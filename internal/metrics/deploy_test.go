package metrics

import (
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cocoon-run/cocoon/deploy/monitoring"
)

// describer records the names of every collector registered on it.
type describer struct {
	*prometheus.Registry
	names map[string]bool
}

func (d *describer) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 64)
	go func() { c.Describe(ch); close(ch) }()
	re := regexp.MustCompile(`fqName: "([^"]+)"`)
	for desc := range ch {
		if m := re.FindStringSubmatch(desc.String()); m != nil {
			d.names[m[1]] = true
		}
	}
	return d.Registry.Register(c)
}

func (d *describer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := d.Register(c); err != nil {
			panic(err)
		}
	}
}

// Every metric the Grafana dashboard and the alert rules in
// deploy/monitoring query is one this package defines (or Go's and the
// process's). The e2e (tests/metrics) checks the same files against a
// live scrape of cocoon server.
func TestDeployNamesExported(t *testing.T) {
	d := &describer{Registry: prometheus.NewRegistry(), names: map[string]bool{}}
	NewAPI(d, nil)
	NewStore(d)
	NewProxy(d)
	NewNode(d, nil, "")
	// Collectors that only exist with a source, described without one.
	d.names["cocoon_sandboxes"] = true
	for _, c := range []prometheus.Collector{newNodeCollector(nil, "")} {
		ch := make(chan *prometheus.Desc, 16)
		c.Describe(ch)
		close(ch)
		for desc := range ch {
			d.names[regexp.MustCompile(`fqName: "([^"]+)"`).FindStringSubmatch(desc.String())[1]] = true
		}
	}
	exprs, err := monitoring.Exprs()
	if err != nil || len(exprs) < 25 {
		t.Fatalf("found %d expressions (%v)", len(exprs), err)
	}
	for _, e := range exprs {
		names := monitoring.MetricNames(e)
		if len(names) == 0 {
			t.Errorf("%q names no metric", e)
		}
		for _, name := range names {
			if strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") || name == "up" {
				continue
			}
			if !d.names[name] {
				t.Errorf("%q queries %s, which Cocoon does not export", e, name)
			}
		}
	}
}
