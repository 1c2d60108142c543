package oom

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// fakeProc writes a proc tree: meminfo and, per pid, statm (resident
// pages), comm and oom_score_adj.
func fakeProc(t *testing.T, totalKB, availKB int, procs map[int][2]string) string {
	t.Helper()
	dir := t.TempDir()
	write := func(p, s string) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "meminfo"), fmt.Sprintf("MemTotal:       %d kB\nMemFree:  1 kB\nMemAvailable:   %d kB\n", totalKB, availKB))
	for pid, v := range procs {
		d := filepath.Join(dir, strconv.Itoa(pid))
		write(filepath.Join(d, "statm"), "100000 "+v[0]+" 0 0 0 0 0\n")
		write(filepath.Join(d, "comm"), fmt.Sprintf("p%d\n", pid))
		write(filepath.Join(d, "oom_score_adj"), v[1]+"\n")
	}
	return dir
}

func TestLargest(t *testing.T) {
	tests := []struct {
		name  string
		procs map[int][2]string
		self  int
		want  int
	}{
		{"largest", map[int][2]string{1: {"900000", "0"}, 2: {"10", "0"}, 30: {"5000", "0"}, 31: {"7000", "0"}}, 2, 31},
		{"skips self", map[int][2]string{2: {"900000", "0"}, 30: {"5", "0"}}, 2, 30},
		{"skips -1000", map[int][2]string{30: {"9000", "-1000"}, 31: {"10", "0"}}, 2, 31},
		{"none", map[int][2]string{1: {"9000", "0"}, 2: {"10", "0"}}, 2, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, ok := Largest(fakeProc(t, 1<<20, 1<<19, tt.procs), tt.self)
			if v.PID != tt.want || ok != (tt.want != 0) {
				t.Errorf("Largest = %+v, %v; want pid %d", v, ok, tt.want)
			}
		})
	}
}

func TestReadMeminfo(t *testing.T) {
	total, avail, err := ReadMeminfo(fakeProc(t, 524288, 1024, nil))
	if err != nil || total != 512<<20 || avail != 1<<20 {
		t.Errorf("ReadMeminfo = %d, %d, %v; want %d, %d", total, avail, err, 512<<20, 1<<20)
	}
	if _, _, err := ReadMeminfo(t.TempDir()); err == nil {
		t.Error("ReadMeminfo of an empty dir: no error")
	}
}

func TestReserveAndInterval(t *testing.T) {
	if got, want := Reserve(512<<20), uint64(64<<20); got != want {
		t.Errorf("Reserve(512 MiB) = %d, want %d", got, want)
	}
	for _, tt := range []struct {
		used uint64
		want time.Duration
	}{{100, 100 * time.Millisecond}, {600, 25 * time.Millisecond}, {900, 5 * time.Millisecond}} {
		if got := Interval(tt.used, 1000); got != tt.want {
			t.Errorf("Interval(%d, 1000) = %v, want %v", tt.used, got, tt.want)
		}
	}
}

// TestRunKillsWhenLow runs the killer over a proc tree with less than the
// reserve available and a real child process as the largest: the child is
// killed, with SIGKILL (exit 137 from a shell), and the killer goes on.
func TestRunKillsWhenLow(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer cmd.Process.Kill()
	proc := fakeProc(t, 512<<10, 16<<10, map[int][2]string{cmd.Process.Pid: {"50000", "0"}, 7: {"10", "-1000"}})
	k := &Killer{Proc: proc, Self: os.Getpid(), Kill: func(pid int) error {
		if pid != cmd.Process.Pid {
			t.Errorf("killed pid %d, want %d", pid, cmd.Process.Pid)
			return nil
		}
		// The fake proc entry goes with the process, as the real one would.
		os.RemoveAll(filepath.Join(proc, strconv.Itoa(pid)))
		return cmd.Process.Kill()
	}}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- k.Run(ctx) }()
	select {
	case err := <-done:
		if cmd.ProcessState.ExitCode() != -1 || cmd.ProcessState.String() != "signal: killed" {
			t.Errorf("child ended %v (%v), want signal: killed", cmd.ProcessState, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the killer did not kill the largest process")
	}
	cancel()
	if err := <-ran; err != context.Canceled {
		t.Errorf("Run = %v, want context.Canceled", err)
	}
}
