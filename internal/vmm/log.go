package vmm

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
)

// TailLog returns the last n lines of the file at path (a console log),
// reading at most its last 64 KiB. A missing file gives "".
func TailLog(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const max = 64 << 10
	if st, err := f.Stat(); err == nil && st.Size() > max {
		f.Seek(st.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	b = bytes.TrimRight(b, "\r\n")
	lines := bytes.Split(b, []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.ReplaceAll(bytes.Join(lines, []byte("\n")), []byte("\r"), nil))
}

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
			return strings.Join(lines[max(0, i-15):i+1], "\n")
		}
	}
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}
