package bench

import (
	"math"
	"slices"
	"time"
)

// Result is one measured figure.
type Result struct {
	// Name is the measurement, e.g. "create.sequential".
	Name string `json:"name"`
	// Runtime ran it: "qemu", "gvisor", "runc", "host".
	Runtime string `json:"runtime"`
	// Accel is the acceleration: "tcg", "kvm", "systrap", "ptrace", "native".
	Accel string  `json:"accel"`
	Unit  string  `json:"unit"`
	N     int     `json:"n"`
	P50   float64 `json:"p50"`
	P95   float64 `json:"p95"`
	P99   float64 `json:"p99"`
	Mean  float64 `json:"mean"`
	Min   float64 `json:"min"`
	Max   float64 `json:"max"`
	// Value is a scalar figure (rates, counts) when there is no distribution.
	Value float64 `json:"value,omitempty"`
	Note  string  `json:"note,omitempty"`
}

// Samples is a distribution of durations.
type Samples []time.Duration

// percentile returns the nearest-rank percentile p (0..100) of sorted ms.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// msResult summarises s in milliseconds.
func msResult(name, rt, accel string, s Samples) Result {
	v := make([]float64, len(s))
	for i, d := range s {
		v[i] = float64(d) / float64(time.Millisecond)
	}
	return distResult(name, rt, accel, "ms", v)
}

// distResult summarises values v of the given unit.
func distResult(name, rt, accel, unit string, v []float64) Result {
	r := Result{Name: name, Runtime: rt, Accel: accel, Unit: unit, N: len(v)}
	if len(v) == 0 {
		return r
	}
	s := slices.Clone(v)
	slices.Sort(s)
	sum := 0.0
	for _, x := range s {
		sum += x
	}
	r.P50, r.P95, r.P99 = percentile(s, 50), percentile(s, 95), percentile(s, 99)
	r.Mean, r.Min, r.Max = sum/float64(len(s)), s[0], s[len(s)-1]
	return r
}

// scalar is a single-valued result.
func scalar(name, rt, accel, unit string, v float64, note string) Result {
	return Result{Name: name, Runtime: rt, Accel: accel, Unit: unit, N: 1, Value: v, P50: v, Note: note}
}
