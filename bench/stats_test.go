package bench

import (
	"testing"
	"time"
)

func TestPercentiles(t *testing.T) {
	var s Samples
	for i := 1; i <= 100; i++ {
		s = append(s, time.Duration(i)*time.Millisecond)
	}
	r := msResult("x", "host", "native", s)
	if r.P50 != 50 || r.P95 != 95 || r.P99 != 99 || r.Min != 1 || r.Max != 100 || r.N != 100 {
		t.Fatalf("got %+v", r)
	}
	if r := msResult("one", "host", "native", Samples{7 * time.Millisecond}); r.P50 != 7 || r.P99 != 7 {
		t.Fatalf("single sample: %+v", r)
	}
	if r := msResult("none", "host", "native", nil); r.N != 0 || r.P50 != 0 {
		t.Fatalf("no samples: %+v", r)
	}
}
