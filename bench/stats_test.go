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

func TestDDRate(t *testing.T) {
	tests := []struct {
		in   string
		want float64
		err  bool
	}{
		{"1073741824 bytes (1.1 GB, 1.0 GiB) copied, 1.2 s, 895 MB/s", 895, false},
		{"1073741824 bytes (1.1 GB, 1.0 GiB) copied, 0.5 s, 2.1 GB/s\n", 2100, false},
		{"1024 bytes copied, 1 s, 1.0 kB/s", 0.001, false},
		{"dd: error writing", 0, true},
	}
	for _, tt := range tests {
		got, err := ddRate(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("ddRate(%q) = %v, %v; want %v (error %v)", tt.in, got, err, tt.want, tt.err)
		}
	}
}
