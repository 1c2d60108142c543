package reaper

import (
	"bufio"
	"context"
	"errors"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// subreaper makes the test process the reaper of its orphaned
// descendants, as PID 1 is of a sandbox's.
func subreaper(t *testing.T) {
	t.Helper()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("PR_SET_CHILD_SUBREAPER: %v", err)
	}
}

// TestOrphanReaped: a background child of a command, orphaned when the
// command exits, is reaped; the command's own exit status stays its
// caller's.
func TestOrphanReaped(t *testing.T) {
	subreaper(t)
	r := New()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)

	cmd := exec.Command("/bin/sh", "-c", "sleep 0.05 </dev/null >/dev/null 2>&1 & echo $!; exit 3")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(func() (int, error) { return startPid(cmd) }); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	orphan, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	var exit *exec.ExitError
	if err := cmd.Wait(); !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Fatalf("own child's wait = %v, want exit status 3", err)
	}
	r.Done(cmd.Process.Pid)
	// The orphan is reaped once it exits: kill(pid, 0) fails with ESRCH
	// only when no zombie is left.
	deadline := time.Now().Add(10 * time.Second)
	for unix.Kill(orphan, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("orphan %d not reaped after 10 s", orphan)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestOwnNeverReaped: children started through Start keep their exit
// status for their own Wait, however fast they exit, while the reaper runs.
func TestOwnNeverReaped(t *testing.T) {
	subreaper(t)
	r := New()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command("/bin/sh", "-c", "exit "+strconv.Itoa(i%5))
			if err := r.Start(func() (int, error) { return startPid(cmd) }); err != nil {
				t.Error(err)
				return
			}
			err := cmd.Wait()
			r.Done(cmd.Process.Pid)
			if got := cmd.ProcessState; got == nil || got.ExitCode() != i%5 {
				t.Errorf("child %d: wait = %v, want exit status %d", i, err, i%5)
			}
		}()
	}
	wg.Wait()
}

// TestNil: a nil Reaper starts and forgets.
func TestNil(t *testing.T) {
	var r *Reaper
	cmd := exec.Command("/bin/true")
	if err := r.Start(func() (int, error) { return startPid(cmd) }); err != nil {
		t.Fatal(err)
	}
	r.Done(cmd.Process.Pid)
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
}

func startPid(cmd *exec.Cmd) (int, error) {
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	return cmd.Process.Pid, nil
}
