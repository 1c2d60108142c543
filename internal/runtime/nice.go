package runtime

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// PoolNice is the scheduling niceness of sandboxes waiting in a warm pool:
// refilling the pool must not slow down the creates that drain it, which
// share the same cores. A claimed sandbox goes back to 0.
const PoolNice = 15

// Renice sets the niceness of every thread of the processes pids. Linux
// keeps a niceness per thread, and a new thread inherits its creator's, so
// all existing threads are changed.
func Renice(nice int, pids ...int) error {
	var errs []error
	for _, pid := range pids {
		tasks, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
		if err != nil {
			errs = append(errs, fmt.Errorf("renice %d: %w", pid, err))
			continue
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			if err := unix.Setpriority(unix.PRIO_PROCESS, tid, nice); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("renice %d/%d: %w", pid, tid, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Descendants returns pids and every process below them, from the parent
// pids in /proc. (gVisor's systrap runs a sandbox's code in stub processes,
// children of the sandbox process, that a renice of the sandbox alone
// would miss.)
func Descendants(pids ...int) []int {
	children := map[int][]int{}
	procs, _ := os.ReadDir("/proc")
	for _, e := range procs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// "pid (comm) state ppid ...": comm may hold spaces and parens.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(f[1]); err == nil {
			children[ppid] = append(children[ppid], pid)
		}
	}
	seen := map[int]bool{}
	var out []int
	for len(pids) > 0 {
		pid := pids[0]
		pids = pids[1:]
		if seen[pid] {
			continue
		}
		seen[pid] = true
		out = append(out, pid)
		pids = append(pids, children[pid]...)
	}
	return out
}

// StartNiced starts cmd with niceness nice, which the processes it starts
// inherit too. It forks from a thread of its own whose niceness it sets
// first: that thread is never unlocked, so it ends with its goroutine
// instead of going back to the scheduler with the niceness.
func StartNiced(cmd *exec.Cmd, nice int) error {
	if nice == 0 {
		return cmd.Start()
	}
	errc := make(chan error, 1)
	go func() {
		goruntime.LockOSThread()
		if err := unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), nice); err != nil {
			errc <- fmt.Errorf("set niceness %d: %w", nice, err)
			return
		}
		errc <- cmd.Start()
	}()
	return <-errc
}
