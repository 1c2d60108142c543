package vmm

import (
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRenice: renice changes every thread of a process, both ways.
func TestRenice(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	nice := func() int {
		// The raw getpriority syscall answers 20 - nice.
		p, err := unix.Getpriority(unix.PRIO_PROCESS, pid)
		if err != nil {
			t.Fatal(err)
		}
		return 20 - p
	}
	for _, want := range []int{poolNice, 0} {
		if err := renice(want, pid); err != nil {
			t.Fatal(err)
		}
		if got := nice(); got != want {
			t.Fatalf("after renice(%d): got niceness %d", want, got)
		}
	}
	if err := renice(0, 1<<22); err == nil {
		t.Error("Renice of a missing process succeeded")
	}
}
