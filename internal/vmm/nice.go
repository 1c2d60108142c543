package vmm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// poolNice is the scheduling niceness of QEMU sandboxes waiting in a warm
// pool: refilling the pool must not slow down the creates that drain it,
// which share the same cores. A claimed sandbox goes back to 0.
const poolNice = 15

// renice sets the niceness of every thread of the processes pids. Linux
// keeps a niceness per thread, and a new thread inherits its creator's, so
// all existing threads are changed.
func renice(nice int, pids ...int) error {
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
