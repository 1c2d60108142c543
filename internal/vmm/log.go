package vmm

import (
	"fmt"
	"strings"

	"github.com/cocoon-run/cocoon/internal/runtime"
)

// TailLog is runtime.TailLog (kept for the package's callers and tests).
func TailLog(path string, n int) string { return runtime.TailLog(path, n) }

// withTail appends the tail of the console log (and of QEMU's own stderr)
// to err, so a guest that died says why.
func withTail(err error, dir string) error {
	msg := ""
	if t := consoleTail(consolePath(dir)); t != "" {
		msg += "\nconsole tail:\n" + t
	}
	if t := TailLog(stderrPath(dir), 5); t != "" {
		msg += "\nqemu stderr:\n" + t
	}
	if msg == "" {
		return err
	}
	return fmt.Errorf("%w%s", err, msg)
}

// consoleTail is the end of a console log, or, when the kernel panicked,
// the lines leading to the panic rather than the stack dump after it.
func consoleTail(path string) string {
	lines := strings.Split(TailLog(path, 300), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], "Kernel panic") {
			tail := lines[max(0, i-15) : i+1]
			// A user-space line (no printk timestamp) can reach the
			// serial console after the panic's first line: keep it.
			for _, l := range lines[i+1:] {
				if l != "" && !strings.HasPrefix(l, "[") {
					tail = append(tail, l)
				}
			}
			return strings.Join(tail, "\n")
		}
	}
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}
