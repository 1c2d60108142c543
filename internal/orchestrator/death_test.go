package orchestrator_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/internal/gvisor"
	"github.com/cocoon-run/cocoon/internal/orchestrator"
)

// runtimePID is the pid of sandbox sb's runtime process (QEMU, or runsc's
// sandbox process), from the pid file its driver keeps in its directory.
func runtimePID(tb testing.TB, dir string, sb orchestrator.Sandbox) int {
	tb.Helper()
	name := sb.ID
	if sb.RuntimeID != "" {
		name = sb.RuntimeID
	}
	file := "qemu.pid"
	if sb.Runtime == gvisor.Name {
		file = "sandbox.pid"
	}
	b, err := os.ReadFile(filepath.Join(dir, "sandboxes", name, file))
	if err != nil {
		tb.Fatalf("pid of %s: %v", sb.ID, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		tb.Fatalf("pid of %s: %v", sb.ID, err)
	}
	return pid
}

// cgroupDirs lists the cgroup directories named after a sandbox's runtime
// name, under any hierarchy.
func cgroupDirs(name string) []string {
	var out []string
	for _, pat := range []string{"/sys/fs/cgroup/*/*/" + name, "/sys/fs/cgroup/*/" + name, "/sys/fs/cgroup/*/*/*/" + name} {
		m, _ := filepath.Glob(pat)
		out = append(out, m...)
	}
	return out
}

// TestDeathReported: kill -9 of a sandbox's runtime process is reported to
// the node's watchers within a second, with the reason; the sandbox shows
// dead; its directory, runtime state (runsc's container) and cgroup are
// removed at once, not at the next restart.
func TestDeathReported(t *testing.T) {
	e := need(t)
	o := e.newOrchestrator(t)
	e.each(t, func(t *testing.T, rt string) {
		ctx := context.Background()
		sb := e.create(t, o, rt, 1)[0]
		name := sb.ID
		if sb.RuntimeID != "" {
			name = sb.RuntimeID
		}
		pid := runtimePID(t, e.nodeDir, sb)
		events, stop := o.Subscribe()
		defer stop()

		t0 := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		var ev orchestrator.Sandbox
		for ev.ID != sb.ID {
			select {
			case ev = <-events:
			case <-time.After(10 * time.Second):
				t.Fatal("no death reported 10 s after kill -9 of the runtime")
			}
		}
		took := time.Since(t0)
		t.Logf("%s: death reported %v after kill -9 (target ≤ 1 s)", rt, took.Round(time.Millisecond))
		if took > time.Second {
			t.Errorf("death reported after %v, want ≤ 1 s", took)
		}
		if ev.State != orchestrator.StateDead || ev.Detail != "runtime exited" {
			t.Errorf("event: state %s detail %q, want dead, \"runtime exited\"", ev.State, ev.Detail)
		}
		got, err := o.Get(ctx, sb.ID)
		if err != nil || got.State != orchestrator.StateDead || got.Detail == "" {
			t.Errorf("Get after the death: %+v, %v; want dead with a reason", got.State, err)
		}
		// Leftovers go at once: poll with a deadline for the cleanup that
		// follows the report.
		dir := filepath.Join(e.nodeDir, "sandboxes", name)
		deadline := time.Now().Add(15 * time.Second)
		for {
			var left []string
			if exists(dir) {
				left = append(left, dir)
			}
			left = append(left, cgroupDirs(name)...)
			if rt == gvisor.Name {
				if ids, err := e.runtimes[rt].(interface {
					ListContainers(context.Context) ([]string, error)
				}).ListContainers(ctx); err == nil && slices.Contains(ids, name) {
					left = append(left, "runsc container "+name)
				}
			}
			if len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("15 s after the death these are left: %v", left)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err := o.Kill(ctx, sb.ID, true); err != nil {
			t.Error(err)
		}
	})
}

// TestDeathOOM: a sandbox that outgrows its memory cgroup is ended by the
// host's OOM killer and reported dead with the reason "out of memory"
// (its cgroup's oom_kill count), not just "runtime exited".
func TestDeathOOM(t *testing.T) {
	e := need(t)
	o := e.newOrchestrator(t)
	e.each(t, func(t *testing.T, rt string) {
		if rt != gvisor.Name {
			// A microVM's guest kernel kills inside its fixed memory; the
			// host's OOM killer never sees it.
			t.Skip("the host's OOM killer ends gVisor sandboxes only")
		}
		ctx := context.Background()
		p := e.params(newID("oom"), rt)
		p.MemoryMB = 256
		sb, err := o.Create(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		defer o.Kill(ctx, sb.ID, true)
		events, stop := o.Subscribe()
		defer stop()
		// tail holds its one endless line in memory. Under gVisor envd's
		// OOM killer would end the hog and keep the sandbox (issue 13), so
		// there the memory is a tmpfs's, which no kill gives back, and the
		// writer is exempt from envd's killer (oom_score_adj -1000, which
		// dd inherits): only the host's OOM killer can end it.
		hog := "head -c 1000000000 /dev/zero | tail > /dev/null"
		if rt == gvisor.Name {
			hog = "sudo sh -c 'echo -1000 > /proc/self/oom_score_adj && mkdir -p /mnt/ram && mount -t tmpfs -o size=2g ram /mnt/ram && dd if=/dev/zero of=/mnt/ram/fill bs=1M count=1000'"
		}
		res, err := run(ctx, sb.Address, testToken, hog)
		t.Logf("memory hog: %+v, %v", res, err)
		select {
		case ev := <-events:
			if ev.ID != sb.ID || ev.State != orchestrator.StateDead || ev.Detail != "out of memory" {
				t.Errorf("event: %s %s %q, want %s dead \"out of memory\"", ev.ID, ev.State, ev.Detail, sb.ID)
			}
		case <-time.After(10 * time.Second):
			got, _ := o.Get(ctx, sb.ID)
			t.Fatalf("no death reported 10 s after the memory hog ended; the sandbox is %s", got.State)
		}
	})
}
