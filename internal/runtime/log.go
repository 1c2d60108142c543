package runtime

import (
	"bytes"
	"io"
	"os"
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
