package process

import (
	"context"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/cocoon-run/cocoon/api/gen/process"
)

// BenchmarkRunTrue measures the round trip of commands.run: Start, the
// stream to its end, over loopback with the Go client. It reports p50 and
// p99 latencies.
func BenchmarkRunTrue(b *testing.B) {
	cases := []struct {
		name string
		tr   transport
		req  func() *pb.StartRequest
	}{
		{"true/http1-json", transports[0], func() *pb.StartRequest { return cmd("true") }},
		{"true/h2c-proto", transports[3], func() *pb.StartRequest { return cmd("true") }},
		{"bash-l-c-true/http1-json", transports[0], func() *pb.StartRequest { return bashLogin("true") }},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			e := newEnv(b, c.tr, nil)
			ctx := context.Background()
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for b.Loop() {
				began := time.Now()
				s, err := e.client.Start(ctx, connect.NewRequest(c.req()))
				if err != nil {
					b.Fatal(err)
				}
				var end *pb.ProcessEvent_EndEvent
				for s.Receive() {
					if ev := s.Msg().GetEvent().GetEnd(); ev != nil {
						end = ev
					}
				}
				if err := s.Err(); err != nil || end.GetExitCode() != 0 {
					b.Fatalf("run: end %v, err %v", end, err)
				}
				s.Close()
				lat = append(lat, time.Since(began))
			}
			b.StopTimer()
			reportPercentiles(b, lat)
		})
	}
	// A Start that fails before any fork (no such command): the same
	// stream's round trip without a process, the protocol's share.
	b.Run("true/rpc-only-baseline", func(b *testing.B) {
		e := newEnv(b, transports[0], nil)
		ctx := context.Background()
		lat := make([]time.Duration, 0, b.N)
		for b.Loop() {
			began := time.Now()
			s, err := e.client.Start(ctx, connect.NewRequest(cmd("no-such-command-for-bench")))
			if err != nil {
				b.Fatal(err)
			}
			for s.Receive() {
			}
			if connect.CodeOf(s.Err()) != connect.CodeInvalidArgument {
				b.Fatalf("run: err %v, want invalid_argument", s.Err())
			}
			s.Close()
			lat = append(lat, time.Since(began))
		}
		b.StopTimer()
		reportPercentiles(b, lat)
	})
	// The same fork and exec without envd, for the protocol's share.
	b.Run("true/exec-only-baseline", func(b *testing.B) {
		lat := make([]time.Duration, 0, b.N)
		for b.Loop() {
			began := time.Now()
			c := exec.Command("true")
			c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := c.Run(); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(began))
		}
		b.StopTimer()
		reportPercentiles(b, lat)
	})
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[int(p*float64(len(lat)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}
