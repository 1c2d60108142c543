package envd

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const transferSize = 256 << 20

// envdProc is a real cmd/envd binary running as a subprocess.
type envdProc struct {
	cmd  *exec.Cmd
	base string
	dir  string
}

// startEnvd builds cmd/envd (static, as shipped) and runs it on a free port.
func startEnvd(tb testing.TB) *envdProc {
	tb.Helper()
	dir := tb.TempDir()
	bin := filepath.Join(dir, "envd")
	build := exec.Command("go", "build", "-o", bin, "github.com/cocoon-run/cocoon/cmd/envd")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		tb.Fatalf("build envd: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "-addr", addr)
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	p := &envdProc{cmd: cmd, base: "http://" + addr, dir: dir}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if res, err := http.Get(p.base + "/health"); err == nil {
			res.Body.Close()
			return p
		}
		if time.Now().After(deadline) {
			tb.Fatal("envd did not come up")
		}
	}
}

// peakRSS is the process's VmHWM in bytes.
func (p *envdProc) peakRSS(tb testing.TB) int64 {
	tb.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return kb << 10
		}
	}
	tb.Fatal("no VmHWM")
	return 0
}

// pattern is an endless, incompressible byte source that costs the client
// next to nothing: one pseudo-random MiB repeated.
type pattern struct{ block []byte }

func newPattern() *pattern {
	b := make([]byte, 1<<20)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return &pattern{block: b}
}

func (p *pattern) Read(b []byte) (int, error) { return copy(b, p.block), nil }

func (p *envdProc) upload(tb testing.TB, path string, size int64) {
	tb.Helper()
	r, err := http.NewRequest(http.MethodPost, p.base+"/files?"+url.Values{"path": {path}}.Encode(), io.LimitReader(newPattern(), size))
	if err != nil {
		tb.Fatal(err)
	}
	r.ContentLength = size
	r.Header.Set("Content-Type", "application/octet-stream")
	res, err := http.DefaultClient.Do(r)
	if err != nil {
		tb.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != 200 {
		tb.Fatalf("upload status %d", res.StatusCode)
	}
}

func (p *envdProc) download(tb testing.TB, path string, size int64) {
	tb.Helper()
	res, err := http.Get(p.base + "/files?" + url.Values{"path": {path}}.Encode())
	if err != nil {
		tb.Fatal(err)
	}
	defer res.Body.Close()
	n, err := io.Copy(io.Discard, res.Body)
	if err != nil || res.StatusCode != 200 || n != size {
		tb.Fatalf("download: status %d, %d bytes, %v", res.StatusCode, n, err)
	}
}

func BenchmarkUpload256MiB(b *testing.B) {
	p := startEnvd(b)
	path := filepath.Join(p.dir, "up.bin")
	b.SetBytes(transferSize)
	b.ResetTimer()
	for range b.N {
		p.upload(b, path, transferSize)
	}
	b.StopTimer()
	b.ReportMetric(float64(p.peakRSS(b))/(1<<20), "envd-peak-RSS-MiB")
}

func BenchmarkDownload256MiB(b *testing.B) {
	p := startEnvd(b)
	path := filepath.Join(p.dir, "down.bin")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(f, io.LimitReader(newPattern(), transferSize)); err != nil {
		b.Fatal(err)
	}
	f.Close()
	b.SetBytes(transferSize)
	b.ResetTimer()
	for range b.N {
		p.download(b, path, transferSize)
	}
	b.StopTimer()
	b.ReportMetric(float64(p.peakRSS(b))/(1<<20), "envd-peak-RSS-MiB")
}

// TestTransferPeakRSS moves 256 MiB each way through the real binary and
// checks envd streamed it: its peak RSS must stay far below the file size.
func TestTransferPeakRSS(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 512 MiB")
	}
	const limit = 64 << 20
	p := startEnvd(t)
	path := filepath.Join(p.dir, "rss.bin")
	start := time.Now()
	p.upload(t, path, transferSize)
	up := time.Since(start)
	if fi, err := os.Stat(path); err != nil || fi.Size() != transferSize {
		t.Fatalf("uploaded file: %v, %v", fi, err)
	}
	start = time.Now()
	p.download(t, path, transferSize)
	down := time.Since(start)
	rss := p.peakRSS(t)
	t.Logf("upload %.0f MB/s, download %.0f MB/s, envd peak RSS %.1f MiB",
		float64(transferSize)/up.Seconds()/1e6, float64(transferSize)/down.Seconds()/1e6, float64(rss)/(1<<20))
	if rss > limit {
		t.Errorf("envd peak RSS %d MiB, want < %d MiB", rss>>20, limit>>20)
	}
}
