package orchestrator_test

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/internal/runtime"
	"github.com/cocoon-run/cocoon/internal/vmm"
)

// eachB runs fn as a sub-benchmark for every runtime with a snapshot.
func (e *env) eachB(b *testing.B, fn func(b *testing.B, rt string)) {
	for _, rt := range e.names {
		b.Run(rt, func(b *testing.B) { fn(b, rt) })
	}
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted)) + 0.5)
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkCreate: 20 creates from the template snapshot, each timed from
// the call until envd has answered /health and /init (Orchestrator.Create
// returns then); p50 and p99 in ms.
func BenchmarkCreate(b *testing.B) {
	e := need(b)
	e.eachB(b, func(b *testing.B, rt string) {
		o := e.newOrchestrator(b)
		ctx := context.Background()
		const n = 20
		var all []time.Duration
		for b.Loop() {
			for range n {
				id := newID("ob")
				t0 := time.Now()
				sb, err := o.Create(ctx, e.params(id, rt))
				d := time.Since(t0)
				if err != nil {
					b.Fatalf("create: %v", err)
				}
				all = append(all, d)
				b.StopTimer()
				mustRun(b, sb.Address, "true")
				if err := o.Kill(ctx, id, true); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		}
		slices.Sort(all)
		b.ReportMetric(ms(percentile(all, 0.5)), "p50-ms")
		b.ReportMetric(ms(percentile(all, 0.99)), "p99-ms")
		b.ReportMetric(ms(all[0]), "min-ms")
		b.ReportMetric(0, "ns/op")
		b.Logf("%s: %d creates, p50 %v p99 %v min %v max %v (load %s)", rt, len(all),
			percentile(all, 0.5), percentile(all, 0.99), all[0], all[len(all)-1], loadavg())
	})
}

// BenchmarkIdleMemory: PSS of the runtime processes per idle sandbox of
// the base template with five alive.
func BenchmarkIdleMemory(b *testing.B) {
	e := need(b)
	e.eachB(b, func(b *testing.B, rt string) {
		o := e.newOrchestrator(b)
		const n = 5
		var perSandbox float64
		for b.Loop() {
			sbs := e.create(b, o, rt, n)
			for _, sb := range sbs {
				mustRun(b, sb.Address, "true")
			}
			time.Sleep(5 * time.Second) // idle
			var total int64
			var procs int
			for _, sb := range sbs {
				pids := withDescendants(runtimeProcs(filepath.Join(e.nodeDir, "sandboxes", sb.ID)))
				kib, err := pssKiB(pids)
				if err != nil {
					b.Fatal(err)
				}
				b.Logf("%s %s: pids %v PSS %.1f MiB", rt, sb.ID, pids, float64(kib)/1024)
				total += kib
				procs += len(pids)
			}
			perSandbox = float64(total) / 1024 / n
			b.Logf("%s: %d sandboxes, %d processes, PSS %.1f MiB total, %.1f MiB per sandbox (load %s)",
				rt, n, procs, float64(total)/1024, perSandbox, loadavg())
			for _, sb := range sbs {
				if err := o.Kill(context.Background(), sb.ID, true); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(perSandbox, "PSS-MiB/sandbox")
		b.ReportMetric(0, "ns/op")
	})
}

// dirty100M starts a process that holds 100 MiB of random bytes and then
// writes its pid to /tmp/dirty.pid.
const dirty100M = `nohup python3 -c 'import os, time
b = bytearray(os.urandom(100 << 20))
open("/tmp/dirty.pid", "w").write(str(os.getpid()))
time.sleep(1e9)' >/dev/null 2>&1 &`

// BenchmarkPauseResume: pause and resume of a sandbox that dirtied
// 100 MiB of guest memory (held by a process), each timed.
func BenchmarkPauseResume(b *testing.B) {
	e := need(b)
	e.eachB(b, func(b *testing.B, rt string) {
		o := e.newOrchestrator(b)
		ctx := context.Background()
		var pauses, resumes []time.Duration
		for b.Loop() {
			sb := e.create(b, o, rt, 1)[0]
			// 100 MiB of random bytes held by a live process (gVisor's
			// /dev/shm is too small for a file of that size).
			mustRun(b, sb.Address, dirty100M)
			pid := mustRun(b, sb.Address, "for i in $(seq 600); do test -e /tmp/dirty.pid && break; sleep 0.1; done; cat /tmp/dirty.pid")
			if rss := mustRun(b, sb.Address, "awk '/VmRSS/ {print $2}' /proc/"+pid+"/status"); len(rss) < 6 {
				b.Fatalf("the dirtying process has VmRSS %s kB, want ≥ 100 MiB", rss)
			}
			t0 := time.Now()
			if _, err := o.Pause(ctx, sb.ID); err != nil {
				b.Fatalf("pause: %v", err)
			}
			pauses = append(pauses, time.Since(t0))
			size := dirSize(o.SnapshotDir(sb.ID))
			t0 = time.Now()
			rs, err := o.Resume(ctx, e.params(sb.ID, rt))
			if err != nil {
				b.Fatalf("resume: %v", err)
			}
			resumes = append(resumes, time.Since(t0))
			if got := mustRun(b, rs.Address, "kill -0 "+pid+" && echo alive"); got != "alive" {
				b.Errorf("the dirtying process %s is gone after resume", pid)
			}
			b.Logf("%s: pause %v (state %.0f MiB), resume %v (load %s)", rt, pauses[len(pauses)-1],
				float64(size)/(1<<20), resumes[len(resumes)-1], loadavg())
			if err := o.Kill(ctx, sb.ID, true); err != nil {
				b.Fatal(err)
			}
		}
		slices.Sort(pauses)
		slices.Sort(resumes)
		b.ReportMetric(ms(percentile(pauses, 0.5)), "pause-ms")
		b.ReportMetric(ms(percentile(resumes, 0.5)), "resume-ms")
		b.ReportMetric(0, "ns/op")
	})
}

// BenchmarkColdBoot: a boot of the same template from scratch until envd
// answers, for comparison with BenchmarkCreate. Only the QEMU driver offers
// a cold boot (vmm.Runtime.ColdBoot); the gVisor driver has none.
func BenchmarkColdBoot(b *testing.B) {
	e := need(b)
	e.eachB(b, func(b *testing.B, rt string) {
		if rt != vmm.Name {
			b.Skipf("the %s driver offers no cold boot", rt)
		}
		ctx := context.Background()
		var boots []time.Duration
		for b.Loop() {
			d, err := coldBoot(ctx, e, e.tmpl)
			if err != nil {
				b.Fatal(err)
			}
			boots = append(boots, d)
			b.Logf("%s: cold boot to envd %v (load %s)", rt, d, loadavg())
		}
		slices.Sort(boots)
		b.ReportMetric(ms(percentile(boots, 0.5)), "boot-ms")
		b.ReportMetric(0, "ns/op")
	})
}

func coldBoot(ctx context.Context, e *env, t *runtime.Template) (time.Duration, error) {
	slot, err := e.slots.Acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer e.slots.Release(context.WithoutCancel(ctx), slot)
	id := newID("cold")
	t0 := time.Now()
	inst, err := e.qemu.ColdBoot(ctx, t, runtime.Spec{ID: id, Dir: filepath.Join(e.nodeDir, "cold", id), Slot: slot})
	if err != nil {
		return 0, err
	}
	defer inst.Kill(context.WithoutCancel(ctx))
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := vmm.WaitHealthy(wctx, slot, inst.Done()); err != nil {
		return 0, fmt.Errorf("cold boot: %w: %s", err, runtime.TailLog(inst.ConsoleLog(), 10))
	}
	return time.Since(t0), nil
}

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
