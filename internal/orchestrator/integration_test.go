package orchestrator_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/internal/gvisor"
	"github.com/cocoon-run/cocoon/internal/orchestrator"
	"github.com/cocoon-run/cocoon/internal/runtime"
	"github.com/cocoon-run/cocoon/internal/vmm"
)

// TestCreateRunIsolate creates five sandboxes from the template snapshot,
// runs a command in each through envd, checks that the guest runs its own
// kernel and that a file written in one sandbox is seen by no other sandbox
// and not by the template.
func TestCreateRunIsolate(t *testing.T) {
	e := need(t)
	e.each(t, func(t *testing.T, rt string) {
		o := e.newOrchestrator(t)
		sbs := e.create(t, o, rt, 5)
		for i, sb := range sbs {
			if sb.State != orchestrator.StateRunning || sb.Runtime != rt {
				t.Errorf("sandbox %d: state %s runtime %s, want running %s", i, sb.State, sb.Runtime, rt)
			}
			if got, want := mustRun(t, sb.Address, "echo hello from $(hostname)"), "hello from "+sb.ID; got != want {
				t.Errorf("sandbox %d: got %q, want %q", i, got, want)
			}
		}

		host, err := exec.Command("uname", "-r").Output()
		if err != nil {
			t.Fatal(err)
		}
		hostRelease := strings.TrimSpace(string(host))
		switch rt {
		case vmm.Name:
			got := mustRun(t, sbs[0].Address, "uname -r")
			if !strings.Contains(got, "cloud-amd64") || got == hostRelease {
				t.Errorf("guest uname -r = %q, want Debian's cloud kernel, not the host's %q", got, hostRelease)
			}
		case gvisor.Name:
			got := mustRun(t, sbs[0].Address, "uname -a; dmesg 2>/dev/null | head -1")
			// gVisor's Sentry reports its own kernel release (…-gvisor)
			// and greets in dmesg with "Starting gVisor...".
			if !strings.Contains(got, "gvisor") || !strings.Contains(got, "Starting gVisor") || strings.Contains(got, hostRelease) {
				t.Errorf("gVisor uname -a = %q, want gVisor's kernel, not the host's %q", got, hostRelease)
			}
		}

		// Copy-on-write: a file in one sandbox is private to it.
		const file = "/home/user/cow-marker"
		mustRun(t, sbs[0].Address, "echo mine > "+file+" && sync")
		if got := mustRun(t, sbs[0].Address, "cat "+file); got != "mine" {
			t.Errorf("sandbox 0 reads %q back, want %q", got, "mine")
		}
		for i, sb := range sbs[1:] {
			if got := mustRun(t, sb.Address, "test -e "+file+" && echo present || echo absent"); got != "absent" {
				t.Errorf("sandbox %d sees sandbox 0's file: %s", i+1, got)
			}
		}
		if exists(filepath.Join(e.tmpl.RootfsDir, file)) {
			t.Errorf("the template's rootfs tree has %s", file)
		}
		fresh := e.create(t, o, rt, 1)[0]
		if got := mustRun(t, fresh.Address, "test -e "+file+" && echo present || echo absent"); got != "absent" {
			t.Errorf("a sandbox created afterwards from the template sees the file: %s", got)
		}
	})
}

// TestPauseResume pauses a sandbox that runs a counter in a shell variable
// (written to a file every 100 ms) and has a file in /home/user, resumes
// it, and checks that both survived and the counter went on from where it
// was: the process kept its memory.
func TestPauseResume(t *testing.T) {
	e := need(t)
	e.each(t, func(t *testing.T, rt string) {
		o := e.newOrchestrator(t)
		sb := e.create(t, o, rt, 1)[0]
		ctx := context.Background()
		mustRun(t, sb.Address, "echo keep-me > /home/user/note")
		mustRun(t, sb.Address, `nohup bash -c 'echo $$ > /home/user/counter.pid; i=0; while :; do i=$((i+1)); echo $i > /home/user/counter.tmp; mv /home/user/counter.tmp /home/user/counter; sleep 0.1; done' >/dev/null 2>&1 &`)
		counter := func(sb orchestrator.Sandbox) int {
			t.Helper()
			var last string
			for range 100 {
				last = mustRun(t, sb.Address, "cat /home/user/counter 2>/dev/null || true")
				if n, err := strconv.Atoi(last); err == nil && n > 0 {
					return n
				}
				time.Sleep(100 * time.Millisecond)
			}
			t.Fatalf("no counter: %q", last)
			return 0
		}
		// Let it count a little.
		first := counter(sb)
		for counter(sb) < first+5 {
			time.Sleep(200 * time.Millisecond)
		}
		pid := mustRun(t, sb.Address, "cat /home/user/counter.pid")
		before := counter(sb)

		t0 := time.Now()
		paused, err := o.Pause(ctx, sb.ID)
		if err != nil {
			t.Fatalf("pause: %v", err)
		}
		t.Logf("pause took %v", time.Since(t0).Round(time.Millisecond))
		if paused.State != orchestrator.StatePaused {
			t.Errorf("state after pause = %s, want paused", paused.State)
		}
		if p := runtimeProcs(filepath.Join(e.nodeDir, "sandboxes", sb.ID)); len(p) != 0 {
			t.Errorf("runtime processes %v still alive after pause", p)
		}
		if got, err := o.Get(ctx, sb.ID); err != nil || got.State != orchestrator.StatePaused {
			t.Errorf("Get after pause = %s, %v; want paused", got.State, err)
		}

		t0 = time.Now()
		resumed, err := o.Resume(ctx, e.params(sb.ID, rt))
		if err != nil {
			t.Fatalf("resume: %v", err)
		}
		t.Logf("resume took %v", time.Since(t0).Round(time.Millisecond))
		if got := mustRun(t, resumed.Address, "cat /home/user/note"); got != "keep-me" {
			t.Errorf("file after resume = %q, want %q", got, "keep-me")
		}
		if got := mustRun(t, resumed.Address, "cat /home/user/counter.pid; kill -0 $(cat /home/user/counter.pid) && echo alive"); got != pid+"\nalive" {
			t.Errorf("counter process after resume: %q, want pid %s alive", got, pid)
		}
		after := counter(resumed)
		if after < before {
			t.Errorf("counter after resume = %d, before pause %d: the process lost its memory", after, before)
		}
		deadline := time.Now().Add(30 * time.Second)
		for counter(resumed) <= after {
			if time.Now().After(deadline) {
				t.Fatalf("the counter stopped at %d after resume", after)
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("counter: %d before pause, %d right after resume", before, after)
	})
}

// TestKillReleasesEverything: after Kill no runtime process of the
// sandbox is alive, its directory is gone, its slot is back in the pool,
// and a second Kill succeeds.
func TestKillReleasesEverything(t *testing.T) {
	e := need(t)
	e.each(t, func(t *testing.T, rt string) {
		o := e.newOrchestrator(t)
		ctx := context.Background()
		sb := e.create(t, o, rt, 1)[0]
		dir := filepath.Join(e.nodeDir, "sandboxes", sb.ID)
		procs := runtimeProcs(dir)
		if len(procs) == 0 {
			t.Fatalf("no runtime process mentions %s", dir)
		}
		if !slices.Contains(e.slots.InUse(), sb.SlotIndex) {
			t.Fatalf("slot %d not in use while the sandbox runs (in use: %v)", sb.SlotIndex, e.slots.InUse())
		}
		if err := o.Kill(ctx, sb.ID, true); err != nil {
			t.Fatalf("kill: %v", err)
		}
		if left := waitGone(dir, 5*time.Second); len(left) != 0 {
			t.Errorf("processes %v of the sandbox survived Kill (before: %v)", left, procs)
		}
		for _, p := range []string{dir, filepath.Join(e.nodeDir, "node", "sandboxes", sb.ID+".json"), o.SnapshotDir(sb.ID)} {
			if exists(p) {
				t.Errorf("%s still exists after Kill", p)
			}
		}
		if slices.Contains(e.slots.InUse(), sb.SlotIndex) {
			t.Errorf("slot %d still in use after Kill", sb.SlotIndex)
		}
		if _, err := o.Get(ctx, sb.ID); !errors.Is(err, orchestrator.ErrNotFound) {
			t.Errorf("Get after Kill: %v, want ErrNotFound", err)
		}
		if err := o.Kill(ctx, sb.ID, true); err != nil {
			t.Errorf("second Kill: %v, want nil", err)
		}
	})
}

// TestBrokenGuestQuotesConsole: a template that cannot boot fails
// BuildSnapshot with an error that quotes the guest's console / runtime log.
func TestBrokenGuestQuotesConsole(t *testing.T) {
	e := need(t)
	e.each(t, func(t *testing.T, rt string) {
		dir := t.TempDir()
		bad := *e.tmpl
		bad.ID = "broken" + strings.ToLower(rt)
		bad.Dir = dir
		switch rt {
		case vmm.Name:
			// A root disk of garbage: the initramfs cannot mount it.
			bad.RootfsImage = filepath.Join(dir, "rootfs.ext4")
			garbage := make([]byte, 64<<20)
			for i := range garbage {
				garbage[i] = byte(i*7 + i>>9)
			}
			if err := os.WriteFile(bad.RootfsImage, garbage, 0o644); err != nil {
				t.Fatal(err)
			}
		case gvisor.Name:
			// A root tree without envd, the container's init.
			bad.RootfsDir = filepath.Join(dir, "rootfs")
			if err := os.MkdirAll(filepath.Join(bad.RootfsDir, "etc"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		slot, err := e.slots.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer e.slots.Release(context.Background(), slot)
		t0 := time.Now()
		err = e.runtimes[rt].BuildSnapshot(ctx, &bad, slot, filepath.Join(dir, "build"))
		if err == nil {
			t.Fatal("BuildSnapshot of a broken template succeeded")
		}
		t.Logf("failed after %v: %v", time.Since(t0).Round(time.Millisecond), err)
		// The guest's own words: the kernel and initramfs on the serial
		// console (QEMU), runsc's report of the container's start (gVisor).
		want := map[string][]string{
			vmm.Name:    {"console tail", "initramfs: cannot mount", "Kernel panic"},
			gvisor.Name: {"/usr/local/bin/envd: no such file or directory"}, // envd is the container's process (PID 1)
		}[rt]
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error does not quote %q from the guest: %v", w, err)
			}
		}
		if HasSnapshotDir(&bad, rt) {
			t.Errorf("a failed build left a snapshot in %s", filepath.Join(bad.Dir, rt))
		}
	})
}

// HasSnapshotDir tells whether the runtime's snapshot directory exists.
func HasSnapshotDir(t *runtime.Template, rt string) bool {
	return exists(filepath.Join(t.Dir, rt)) || orchestrator.HasSnapshot(t, rt)
}
