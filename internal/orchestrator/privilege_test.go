package orchestrator_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRuntimeProcessesUnprivileged (issue 18): on both runtimes, as the
// node runs them, no runtime process of a sandbox (QEMU; gVisor's sentry,
// gofer and stubs: every process that names the sandbox's directory) has
// euid 0, before and after a pause and resume.
func TestRuntimeProcessesUnprivileged(t *testing.T) {
	e := need(t)
	e.each(t, func(t *testing.T, rt string) {
		o := e.newOrchestrator(t)
		ctx := context.Background()
		sb := e.create(t, o, rt, 1)[0]
		check := func(when string) {
			t.Helper()
			dir := filepath.Join(e.nodeDir, "sandboxes", sb.ID)
			procs := runtimeProcs(dir)
			if len(procs) == 0 {
				t.Fatalf("%s: no runtime process mentions %s", when, dir)
			}
			for _, pid := range procs {
				uid, name, err := euidOf(pid)
				if err != nil {
					continue // exited meanwhile
				}
				if uid == "0" {
					t.Errorf("%s: %s process %d (%s) has euid 0", when, rt, pid, name)
				}
			}
		}
		check("created")
		if _, err := o.Pause(ctx, sb.ID); err != nil {
			t.Fatalf("pause: %v", err)
		}
		resumed, err := o.Resume(ctx, e.params(sb.ID, rt))
		if err != nil {
			t.Fatalf("resume: %v", err)
		}
		if got := mustRun(t, resumed.Address, "id -u; sudo -n id -u"); got != "1000\n0" {
			t.Errorf("id -u; sudo -n id -u after resume = %q, want 1000 and 0 inside", got)
		}
		check("resumed")
	})
}

// euidOf reads the effective uid and the name of pid from /proc.
func euidOf(pid int) (uid, name string, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		switch k {
		case "Name":
			name = strings.TrimSpace(v)
		case "Uid":
			if ids := strings.Fields(v); len(ids) > 1 {
				uid = ids[1]
			}
		}
	}
	return uid, name, sc.Err()
}
