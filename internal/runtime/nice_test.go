package runtime

import (
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestStartNicedAndRenice: a process started niced passes the niceness to
// its children; Descendants finds them and Renice brings the whole tree
// back.
func TestStartNicedAndRenice(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sleep 30 & echo $!; wait")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := StartNiced(cmd, PoolNice); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	buf := make([]byte, 32)
	n, _ := out.Read(buf)
	child, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil {
		t.Fatalf("child pid %q: %v", buf[:n], err)
	}
	defer unix.Kill(child, unix.SIGKILL)
	nice := func(pid int) int {
		// The raw getpriority syscall answers 20 - nice.
		p, err := unix.Getpriority(unix.PRIO_PROCESS, pid)
		if err != nil {
			t.Fatal(err)
		}
		return 20 - p
	}
	if got, got2 := nice(cmd.Process.Pid), nice(child); got != PoolNice || got2 != PoolNice {
		t.Fatalf("niceness of the process and its child: got %d and %d, want %d", got, got2, PoolNice)
	}
	if self := nice(unix.Gettid()); self != 0 {
		t.Fatalf("the caller's thread kept niceness %d", self)
	}
	tree := Descendants(cmd.Process.Pid)
	if !slices.Contains(tree, child) || tree[0] != cmd.Process.Pid {
		t.Fatalf("Descendants(%d) = %v, want it and %d", cmd.Process.Pid, tree, child)
	}
	if err := Renice(0, tree...); err != nil {
		t.Fatal(err)
	}
	if got, got2 := nice(cmd.Process.Pid), nice(child); got != 0 || got2 != 0 {
		t.Fatalf("after Renice(0): got %d and %d", got, got2)
	}
}
