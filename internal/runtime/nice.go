package runtime

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strconv"

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
