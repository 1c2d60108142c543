package network

import (
	"context"
	"testing"
)

// BenchmarkAcquireWarm times Acquire from a warm pool (Release untimed).
func BenchmarkAcquireWarm(b *testing.B) {
	ctx := context.Background()
	m := newTestManager(b, Config{Prefix: "cntbw", Pool: mustPrefix("10.238.12.0/28"), EgressInterface: "lo", PoolSize: 1})
	if err := m.Prewarm(ctx, 1); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		s, err := m.Acquire(ctx)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := m.Release(ctx, s); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkAcquireCold times Acquire creating a slot (Release, which
// destroys it, untimed).
func BenchmarkAcquireCold(b *testing.B) {
	ctx := context.Background()
	m := newTestManager(b, Config{Prefix: "cntbc", Pool: mustPrefix("10.238.13.0/28"), EgressInterface: "lo", PoolSize: -1})
	for b.Loop() {
		s, err := m.Acquire(ctx)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := m.Release(ctx, s); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkRelease times resetting a slot back into the pool.
func BenchmarkRelease(b *testing.B) {
	ctx := context.Background()
	m := newTestManager(b, Config{Prefix: "cntbr", Pool: mustPrefix("10.238.14.0/28"), EgressInterface: "lo", PoolSize: 1})
	if err := m.Prewarm(ctx, 1); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		b.StopTimer()
		s, err := m.Acquire(ctx)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := m.Release(ctx, s); err != nil {
			b.Fatal(err)
		}
	}
}
