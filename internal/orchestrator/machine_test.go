package orchestrator_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Tests that a sandbox behaves like a machine (issue 13): the base image's
// tools, a bounded disk, memory limits that kill one process.

// TestMachineBaseTools: the tools agents assume are installed, the
// hostname resolves and sudo prints nothing on stderr.
func TestMachineBaseTools(t *testing.T) {
	e := need(t)
	e.each(t, func(t *testing.T, rt string) {
		o := e.newOrchestrator(t)
		sb := e.create(t, o, rt, 1)[0]
		ctx := context.Background()
		for _, tool := range []string{"python3", "pip", "pip3", "node", "npm", "git", "curl", "wget", "gcc", "g++", "make", "unzip", "jq", "sudo"} {
			if r, err := run(ctx, sb.Address, testToken, "command -v "+tool); err != nil || r.ExitCode != 0 {
				t.Errorf("%s is not installed: %v %+v", tool, err, r)
			}
		}
		if got := mustRun(t, sb.Address, "whoami; echo $HOME"); got != "user\n/home/user" {
			t.Errorf("whoami; echo $HOME = %q, want user, /home/user", got)
		}
		// sudo resolves the host's own name: no "unable to resolve host".
		r, err := run(ctx, sb.Address, testToken, "sudo -n true && sudo -n whoami && getent hosts $(hostname)")
		if err != nil || r.ExitCode != 0 || r.Stderr != "" || !strings.HasPrefix(r.Stdout, "root\n") {
			t.Errorf("sudo: %v exit %d stdout %q stderr %q; want root and no stderr", err, r.ExitCode, r.Stdout, r.Stderr)
		}
		// --without-pip: ensurepip takes minutes under TCG; pip is checked as a module.
		mustRun(t, sb.Address, "python3 -m venv --without-pip /tmp/venv && /tmp/venv/bin/python -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' && python3 -m pip --version && cd /tmp && printf 'int main(){return 0;}' > c.c && gcc c.c -o c && ./c && node -e 'process.exit(0)'")
		// Documentation is not shipped.
		if got := mustRun(t, sb.Address, "find /usr/share/man /usr/share/doc -type f ! -name copyright | wc -l"); got != "0" {
			t.Errorf("%s documentation files in the image, want 0", got)
		}
	})
}

// TestMachineDisk: df shows the template's disk size; filling the disk
// fails the writer with ENOSPC while the sandbox and its other processes
// live; freeing space lets it write again; getMetrics reports the disk;
// a file written before a pause reads back identical after the resume.
func TestMachineDisk(t *testing.T) {
	e := need(t)
	e.each(t, func(t *testing.T, rt string) {
		o := e.newOrchestrator(t)
		sb := e.create(t, o, rt, 1)[0]
		ctx := context.Background()
		diskMB := e.tmpl.DiskMB
		sizeMB, _ := strconv.Atoi(mustRun(t, sb.Address, "df -B1M --output=size / | tail -1 | tr -d ' '"))
		if sizeMB < diskMB*9/10 || sizeMB > diskMB {
			t.Errorf("df / = %d MiB, want ≈ %d MiB", sizeMB, diskMB)
		}
		m, err := o.Metrics(ctx, sb.ID)
		if err != nil {
			t.Fatal(err)
		}
		if m.DiskTotal < uint64(diskMB)<<20*9/10 || m.DiskTotal > uint64(diskMB)<<20 {
			t.Errorf("metrics disk_total = %d, want ≈ %d MiB", m.DiskTotal, diskMB)
		}
		mustRun(t, sb.Address, "nohup sleep 3600 >/dev/null 2>&1 & echo $! > /home/user/sleep.pid")

		t0 := time.Now()
		// Most of the space at once (writing GiBs takes minutes under
		// TCG), then dd writes into the last 64 MiB until ENOSPC.
		r, err := run(ctx, sb.Address, testToken, "avail=$(df -B1M --output=avail /home/user | tail -1); fallocate -l $((avail - 64))M /home/user/fill0 || true; dd if=/dev/zero of=/home/user/fill bs=4M status=none; echo dd=$?")
		if err != nil {
			t.Fatalf("fill the disk: %v", err)
		}
		t.Logf("filled the disk in %v", time.Since(t0).Round(time.Millisecond))
		if !strings.Contains(r.Stdout, "dd=1") || !strings.Contains(r.Stderr, "No space left on device") {
			t.Errorf("dd past the disk: stdout %q stderr %q; want exit 1, No space left on device", r.Stdout, r.Stderr)
		}
		if got := mustRun(t, sb.Address, "kill -0 $(cat /home/user/sleep.pid) && echo alive"); got != "alive" {
			t.Errorf("background process after ENOSPC: %q", got)
		}
		if m, err := o.Metrics(ctx, sb.ID); err != nil || m.DiskUsed < m.DiskTotal*8/10 {
			t.Errorf("metrics of a full disk: used %d of %d (%v)", m.DiskUsed, m.DiskTotal, err)
		}
		mustRun(t, sb.Address, "rm -f /home/user/fill /home/user/fill0 && dd if=/dev/zero of=/home/user/again bs=1M count=64 status=none && sync")

		sum := mustRun(t, sb.Address, "head -c 32M /dev/urandom > /home/user/random && md5sum < /home/user/random")
		if _, err := o.Pause(ctx, sb.ID); err != nil {
			t.Fatalf("pause: %v", err)
		}
		resumed, err := o.Resume(ctx, e.params(sb.ID, rt))
		if err != nil {
			t.Fatalf("resume: %v", err)
		}
		if got := mustRun(t, resumed.Address, "md5sum < /home/user/random"); got != sum {
			t.Errorf("file after resume: md5 %q, want %q", got, sum)
		}
		if got, _ := strconv.Atoi(mustRun(t, resumed.Address, "df -B1M --output=size / | tail -1 | tr -d ' '")); got != sizeMB {
			t.Errorf("df / after resume = %d MiB, want %d", got, sizeMB)
		}
	})
}

// TestMachineMemoryHog: a process that allocates more than the sandbox's
// memory is killed (exit 137, or MemoryError); the sandbox and a
// background process live.
func TestMachineMemoryHog(t *testing.T) {
	e := need(t)
	e.each(t, func(t *testing.T, rt string) {
		o := e.newOrchestrator(t)
		sb := e.create(t, o, rt, 1)[0]
		ctx := context.Background()
		mustRun(t, sb.Address, "nohup sleep 3600 >/dev/null 2>&1 & echo $! > /home/user/sleep.pid")
		// "; echo" keeps bash from exec'ing python, so its status shows.
		r, err := run(ctx, sb.Address, testToken, `python3 -c 'a = []
while True: a.append(bytearray(8 << 20))'; echo "exit=$?"`)
		if err != nil {
			t.Fatalf("memory hog: %v", err)
		}
		if !strings.Contains(r.Stdout, "exit=137") && !strings.Contains(r.Stderr, "MemoryError") {
			t.Errorf("memory hog ended with %q stderr %q; want exit=137 or MemoryError", r.Stdout, r.Stderr)
		}
		if got := mustRun(t, sb.Address, "kill -0 $(cat /home/user/sleep.pid) && echo alive"); got != "alive" {
			t.Errorf("background process after the hog: %q", got)
		}
		// Under gVisor envd killed the hog: the host's OOM killer (which
		// may take the sentry, the whole sandbox) never ran.
		if n := hostOOMKills("cocoon-gvisor/" + sb.ID); rt == "gvisor" && n != 0 {
			t.Errorf("the host's OOM killer killed %d processes of the sandbox, want 0 (envd's killer first)", n)
		}
	})
}

// hostOOMKills is the oom_kill counter of a host memory cgroup (v1 or v2).
func hostOOMKills(rel string) int {
	for _, f := range []string{"/sys/fs/cgroup/memory/" + rel + "/memory.oom_control", "/sys/fs/cgroup/" + rel + "/memory.events"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "oom_kill "); ok {
				n, _ := strconv.Atoi(strings.TrimSpace(v))
				return n
			}
		}
	}
	return 0
}

// TestMachineKillAll: `sudo kill -9 -1` (root kills every process it may)
// ends its command at once with a kill, not a hung request; envd, the
// sandbox's PID 1, which kill -1 spares, lives: the next command runs and
// PID 1 reaps the orphans; Kill then leaves no host process behind.
func TestMachineKillAll(t *testing.T) {
	e := need(t)
	e.each(t, func(t *testing.T, rt string) {
		o := e.newOrchestrator(t)
		sb := e.create(t, o, rt, 1)[0]
		ctx := context.Background()
		if got := mustRun(t, sb.Address, "cat /proc/1/comm"); got != "envd" {
			t.Errorf("PID 1 is %q, want envd", got)
		}
		mustRun(t, sb.Address, "nohup sleep 3600 >/dev/null 2>&1 & echo $! > /home/user/sleep.pid")
		t0 := time.Now()
		r, err := run(ctx, sb.Address, testToken, "sudo kill -9 -1; echo survived")
		if err != nil {
			t.Fatalf("kill -9 -1: %v (after %v), want an end event", err, time.Since(t0))
		}
		t.Logf("kill -9 -1 ended in %v: exit %d stdout %q", time.Since(t0).Round(time.Millisecond), r.ExitCode, r.Stdout)
		if r.ExitCode != -1 || strings.Contains(r.Stdout, "survived") {
			t.Errorf("kill -9 -1: exit %d stdout %q; want its shell killed (exit -1)", r.ExitCode, r.Stdout)
		}
		if got := mustRun(t, sb.Address, "kill -0 $(cat /home/user/sleep.pid) 2>/dev/null || echo gone"); got != "gone" {
			t.Errorf("the background sleep after kill -9 -1: %q, want gone", got)
		}
		// Orphans are reaped (the killed sudo's kill): no zombie stays
		// once PID 1 had up to 5 s.
		if got := mustRun(t, sb.Address, "for i in $(seq 50); do [ $(ps -eo stat= | grep -c '^Z') = 0 ] && break; sleep 0.1; done; ps -eo stat= | grep -c '^Z' || true"); got != "0" {
			t.Errorf("%s zombies in the sandbox, want 0", got)
		}
		dir := filepath.Join(e.nodeDir, "sandboxes", sb.ID)
		if err := o.Kill(ctx, sb.ID, true); err != nil {
			t.Fatalf("kill: %v", err)
		}
		if left := waitGone(dir, 5*time.Second); len(left) != 0 {
			t.Errorf("processes %v of the sandbox survived Kill", left)
		}
	})
}
