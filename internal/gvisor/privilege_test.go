package gvisor

import (
	"bufio"
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cocoon-run/cocoon/internal/nodecaps"
	"github.com/cocoon-run/cocoon/internal/runtime"
)

// cgroupProcs lists the processes in container id's cgroup (the pids
// controller's on a v1 or hybrid host, the unified one on v2).
func cgroupProcs(tb testing.TB, d *Driver, id string) []int {
	tb.Helper()
	rel := d.cgroupPath(id)
	dir := filepath.Join("/sys/fs/cgroup", rel)
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
		dir = filepath.Join("/sys/fs/cgroup/pids", rel)
	}
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		tb.Fatalf("sandbox cgroup: %v", err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, _ := strconv.Atoi(f)
		pids = append(pids, pid)
	}
	return pids
}

// cgroupFile reads a file of container id's pids cgroup.
func cgroupFile(tb testing.TB, d *Driver, id, name string) string {
	tb.Helper()
	dir := filepath.Join("/sys/fs/cgroup", d.cgroupPath(id))
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
		dir = filepath.Join("/sys/fs/cgroup/pids", d.cgroupPath(id))
	}
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		tb.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// euid reads the effective uid of pid from /proc/<pid>/status.
func euid(tb testing.TB, pid int) (int, bool) {
	tb.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false // exited meanwhile
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Uid:"); ok {
			ids := strings.Fields(rest)
			uid, _ := strconv.Atoi(ids[1])
			return uid, true
		}
	}
	tb.Fatalf("no Uid line for %d", pid)
	return 0, false
}

// Issue 18: every long-lived runtime process of a sandbox (the sentry the
// driver reports, the gofer, systrap stubs: all of its cgroup, and anything
// carrying the driver's state dir) runs as the sandboxes' host uid, not
// root. Before, the sentry and the gofer had euid 0.
func TestRuntimeProcessesNotRoot(t *testing.T) {
	need(t)
	d := newDriver(t)
	tpl := newTemplate(t, d)
	inst, spec := restore(t, d, runtime.Source{Template: tpl})
	pids := cgroupProcs(t, d, spec.ID)
	for _, p := range processesWith(d.cfg.StateDir) {
		pid, _ := strconv.Atoi(strings.Fields(p)[0])
		pids = append(pids, pid)
	}
	found := map[int]bool{}
	for _, pid := range pids {
		uid, ok := euid(t, pid)
		if !ok || found[pid] {
			continue
		}
		found[pid] = true
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		name, _, _ := strings.Cut(string(cmd), "\x00")
		if uid == 0 {
			t.Errorf("process %d (%s) has euid 0", pid, name)
		} else if uid != DefaultHostID {
			t.Errorf("process %d (%s) has euid %d, want %d", pid, name, uid, DefaultHostID)
		}
	}
	// The sentry and the gofer at least.
	if !found[inst.PID()] || len(found) < 2 {
		t.Errorf("checked processes %v, want the sandbox %d and its gofer", found, inst.PID())
	}
	// Its cgroup limits I/O on the disk of its directory.
	if major, minor, err := runtime.BlockDevice(spec.Dir); err == nil {
		dir := filepath.Join("/sys/fs/cgroup/blkio", d.cgroupPath(spec.ID))
		b, err := os.ReadFile(filepath.Join(dir, "blkio.throttle.read_bps_device"))
		want := fmt.Sprintf("%d:%d %d", major, minor, runtime.DefaultIOLimit.ReadBps)
		if err == nil && !strings.Contains(string(b), want) {
			t.Errorf("blkio.throttle.read_bps_device = %q, want %q", b, want)
		}
	}
	// Still a working sandbox over the id-mapped tree: it writes (to its
	// overlay) and reads back.
	writeFile(t, spec.Slot, "/home/user/x", "y")
	if got, ok := readFile(t, spec.Slot, "/home/user/x"); !ok || got != "y" {
		t.Errorf("read back %q (%v), want %q", got, ok, "y")
	}
}

// Issue 18: a fork bomb inside a sandbox stops at its cgroup's pids limit;
// the sandbox keeps answering and the host is untouched.
func TestForkBombHitsPidsLimit(t *testing.T) {
	need(t)
	d := newDriver(t)
	d.cfg.Pids = 128
	tpl := newTemplate(t, d)
	_, spec := restore(t, d, runtime.Source{Template: tpl})
	t.Logf("pids.current before: %s", cgroupFile(t, d, spec.ID, "pids.current"))
	const tries = 5000
	code, body := call(t, spec.Slot, "POST", "forkbomb", url.Values{"n": {strconv.Itoa(tries)}})
	events := cgroupFile(t, d, spec.ID, "pids.events")
	t.Logf("fork bomb: %d %s; pids.events: %s", code, body, events)
	if events == "max 0" {
		t.Errorf("pids.events = %q: the fork bomb never reached the pids limit", events)
	}
	started, _ := strconv.Atoi(strings.Fields(body + " 0")[0])
	if code != 200 || started >= tries || started > int(d.cfg.Pids) {
		t.Fatalf("fork bomb started %d of %d processes (%d %q), want it stopped under the pids limit %d", started, tries, code, body, d.cfg.Pids)
	}
	// The sandbox survives and serves again.
	ctx := context.Background()
	if err := WaitEnvd(ctx, spec.Slot.Addr.Addr()); err != nil {
		t.Fatalf("sandbox after the fork bomb: %v", err)
	}
	writeFile(t, spec.Slot, "/tmp/after", "ok")
	if got, ok := readFile(t, spec.Slot, "/tmp/after"); !ok || got != "ok" {
		t.Errorf("after the fork bomb: read %q (%v)", got, ok)
	}
}

// The capability bounding set of deploy/cocoon.service is enough for
// gVisor sandboxes: unprivileged restore, pause and resume pass under it.
func TestUnderNodeBoundingSet(t *testing.T) {
	need(t)
	nodecaps.RerunTests(t, filepath.Join("..", ".."), "TestPauseResume", "TestRuntimeProcessesNotRoot")
}

// A template view whose container runsc does not know (a node died between
// the mount and runsc run) is unmounted by the next driver on the state
// dir; a running container's view stays.
func TestNewSweepsOrphanViews(t *testing.T) {
	need(t)
	d := newDriver(t)
	tpl := newTemplate(t, d)
	_, spec := restore(t, d, runtime.Source{Template: tpl})
	orphan, err := d.ids.mount(d.cfg.Runsc, "orphan-view", fx.rootfs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(context.Background(), d.cfg); err != nil {
		t.Fatal(err)
	}
	if isMountPoint(orphan) {
		t.Errorf("orphan view %s still mounted", orphan)
	}
	if p := d.ids.path(spec.ID); !isMountPoint(p) {
		t.Errorf("running container's view %s was unmounted", p)
	}
}

// isMountPoint reports whether path is in /proc/self/mountinfo.
func isMountPoint(path string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}
