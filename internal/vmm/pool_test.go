package vmm

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/internal/runtime"
)

// TestPrespawnClaim: a prespawned QEMU (state loaded, guest running) becomes
// a sandbox by a rename of its directory; the result behaves like a restored
// clone, can be re-adopted by its new directory and is cleaned up by Kill.
func TestPrespawnClaim(t *testing.T) {
	needQEMU(t)
	ctx := context.Background()
	r := newRuntime(t)
	tmpl := testTemplate(t, false)
	build, slot := testSlot(t, 20), testSlot(t, 21)
	if err := r.BuildSnapshot(ctx, tmpl, build, t.TempDir()+"/build"); err != nil {
		t.Fatalf("BuildSnapshot: %v", err)
	}
	poolDir := filepath.Join(t.TempDir(), "pool", "w1")
	t0 := time.Now()
	p, err := r.Prespawn(ctx, tmpl, slot, poolDir)
	if err != nil {
		t.Fatalf("Prespawn: %v", err)
	}
	t.Logf("prespawned (restored, envd answered) in %v", time.Since(t0))
	pid := p.(*Prespawned).inst.pid

	spec := runtime.Spec{ID: "claimed", Dir: filepath.Join(t.TempDir(), "sandboxes", "claimed"), Slot: slot}
	t0 = time.Now()
	inst, err := p.Claim(ctx, spec)
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	t.Cleanup(func() { inst.Kill(ctx) })
	t.Logf("claimed in %v", time.Since(t0))
	checkUnprivileged(t, r, inst.(*Instance), slot)
	if _, err := os.Stat(poolDir); !os.IsNotExist(err) {
		t.Errorf("pool dir after claim: %v", err)
	}
	if code, body := guestDo(t, slot, "GET", "/file?path=hello", nil); code != 200 || body != "from the template\n" {
		t.Errorf("claimed guest: template file = %d %q", code, body)
	}
	if got := inst.ConsoleLog(); got != filepath.Join(spec.Dir, consoleName) {
		t.Errorf("console log %s, want in the sandbox dir", got)
	}
	if cwd, _ := os.Readlink("/proc/" + itoa(pid) + "/cwd"); cwd != spec.Dir {
		t.Errorf("qemu cwd %s, want %s", cwd, spec.Dir)
	}

	// A later orchestrator re-adopts it by its new directory (QMP serves
	// one client: the first one goes, as it would with its process).
	inst.(*Instance).qmp.Close()
	adopted, err := r.Adopt(ctx, spec)
	if err != nil {
		t.Fatalf("Adopt of a claimed qemu: %v", err)
	}
	if adopted.PID() != pid {
		t.Errorf("adopted pid %d, want %d", adopted.PID(), pid)
	}
	if err := adopted.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if !waitGoneFor(pid, 10*time.Second) {
		t.Errorf("qemu %d alive after Kill", pid)
	}
	if _, err := os.Stat(spec.Dir); !os.IsNotExist(err) {
		t.Errorf("sandbox dir after Kill: %v", err)
	}

	// A claim into a slot other than its own is refused, and the process
	// is gone afterwards.
	other := testSlot(t, 22)
	p2, err := r.Prespawn(ctx, tmpl, other, filepath.Join(t.TempDir(), "pool", "w2"))
	if err != nil {
		t.Fatalf("Prespawn: %v", err)
	}
	pid2 := p2.(*Prespawned).inst.pid
	if _, err := p2.Claim(ctx, runtime.Spec{ID: "x", Dir: filepath.Join(t.TempDir(), "x"), Slot: slot}); err == nil {
		t.Fatal("Claim into a foreign slot succeeded")
	}
	if !waitGoneFor(pid2, 10*time.Second) {
		t.Errorf("qemu %d alive after a failed claim", pid2)
	}
}

func waitGoneFor(pid int, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if gone(pid) {
			return true
		}
	}
	return false
}

func itoa(i int) string { return strconv.Itoa(i) }
