package gvisor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/internal/network"
	"github.com/cocoon-run/cocoon/internal/runtime"
)

// BenchmarkRestore measures a create: Restore from the template snapshot
// until envd's /health answers from the host.
//
//	go test -run '^$' -bench Restore -benchtime 10x ./internal/gvisor
func BenchmarkRestore(b *testing.B) {
	need(b)
	d := newDriver(b)
	tpl := newTemplate(b, d)
	slots := []*network.Slot{newSlot(b), newSlot(b)}
	var toHealth, toRunning []time.Duration
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		spec := runtime.Spec{
			ID: fmt.Sprintf("bench%d-%d", os.Getpid()%10000, i), Dir: filepath.Join(b.TempDir(), "sbx"),
			VCPUs: 1, MemoryMB: 256, Slot: slots[i%len(slots)],
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		start := time.Now()
		inst, err := d.Restore(ctx, runtime.Source{Template: tpl}, spec)
		if err != nil {
			b.Fatal(err)
		}
		toRunning = append(toRunning, time.Since(start))
		if err := WaitEnvd(ctx, spec.Slot.Addr.Addr()); err != nil {
			b.Fatal(err)
		}
		toHealth = append(toHealth, time.Since(start))
		cancel()
		b.StopTimer()
		if err := inst.Kill(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(percentile(toHealth, 50), "p50-ms")
	b.ReportMetric(percentile(toHealth, 99), "p99-ms")
	b.ReportMetric(percentile(toRunning, 50), "restore-p50-ms")
}

func percentile(ds []time.Duration, p int) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return float64(s[max(i-1, 0)].Microseconds()) / 1000
}

// BenchmarkPythonLoop compares a CPU-bound Python loop (10^6 additions,
// timed by Python itself) inside a sandbox with the host. Needs the Debian
// test rootfs and python3 on the host.
//
//	go test -run '^$' -bench PythonLoop -benchtime 5x ./internal/gvisor
func BenchmarkPythonLoop(b *testing.B) {
	need(b)
	if !fx.debian {
		b.Skip("needs the Debian test rootfs ($COCOON_TEST_DATA_DIR/gvt-rootfs)")
	}
	host, err := exec.LookPath("python3")
	if err != nil {
		b.Skip("no python3 on the host")
	}
	d := newDriver(b)
	tpl := newTemplate(b, d)
	_, spec := restore(b, d, runtime.Source{Template: tpl})
	const prog = "import time\nt=time.perf_counter()\ns=0\nfor i in range(10**6): s+=i\nprint((time.perf_counter()-t)*1000)"
	run := func(args ...string) float64 {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			b.Fatalf("%v: %v: %s", args, err, out)
		}
		ms, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
		if err != nil {
			b.Fatalf("%v: %q: %v", args, out, err)
		}
		return ms
	}
	var inside, onHost []time.Duration
	var execWall []time.Duration
	for b.Loop() {
		start := time.Now()
		ms := run(append([]string{d.cfg.Runsc}, append(d.commandArgs(), "exec", spec.ID, "python3", "-c", prog)...)...)
		execWall = append(execWall, time.Since(start))
		inside = append(inside, time.Duration(ms*float64(time.Millisecond)))
		onHost = append(onHost, time.Duration(run(host, "-c", prog)*float64(time.Millisecond)))
	}
	b.ReportMetric(percentile(inside, 50), "sandbox-ms")
	b.ReportMetric(percentile(onHost, 50), "host-ms")
	b.ReportMetric(percentile(execWall, 50), "exec-wall-ms")
}

// BenchmarkRestoreUnprivileged compares creates (Restore until envd
// answers) of unprivileged sandboxes (user namespace, id-mapped template
// view) with sandboxes run as root (Config.AsRoot, runsc's default),
// alternating the two in one loop so that both see the same host load.
//
//	go test -run '^$' -bench RestoreUnprivileged -benchtime 40x ./internal/gvisor
func BenchmarkRestoreUnprivileged(b *testing.B) {
	need(b)
	unpriv := newDriver(b)
	asRoot := newDriver(b)
	asRoot.ids = nil // what New does with AsRoot
	asRoot.cfg.AsRoot = true
	tpls := map[*Driver]*runtime.Template{unpriv: newTemplate(b, unpriv), asRoot: newTemplate(b, asRoot)}
	slots := []*network.Slot{newSlot(b), newSlot(b)}
	times := map[*Driver][]time.Duration{}
	for i := 0; b.Loop(); i++ {
		for _, d := range []*Driver{unpriv, asRoot} {
			spec := runtime.Spec{
				ID: fmt.Sprintf("benchu%d-%d-%t", os.Getpid()%10000, i, d.cfg.AsRoot), Dir: filepath.Join(b.TempDir(), "sbx"),
				VCPUs: 1, MemoryMB: 256, Slot: slots[i%len(slots)],
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			start := time.Now()
			inst, err := d.Restore(ctx, runtime.Source{Template: tpls[d]}, spec)
			if err != nil {
				b.Fatal(err)
			}
			if err := WaitEnvd(ctx, spec.Slot.Addr.Addr()); err != nil {
				b.Fatal(err)
			}
			times[d] = append(times[d], time.Since(start))
			cancel()
			if err := inst.Kill(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(percentile(times[unpriv], 50), "unprivileged-p50-ms")
	b.ReportMetric(percentile(times[asRoot], 50), "root-p50-ms")
}
