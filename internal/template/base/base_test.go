package base

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/internal/runtime"
	"github.com/cocoon-run/cocoon/internal/template/guest"
)

func TestOptionsDefaults(t *testing.T) {
	tests := []struct {
		name    string
		in      Options
		want    [3]int
		wantErr bool
	}{
		{"defaults", Options{DataDir: "/d", EnvdPath: "/e"}, [3]int{2, 512, 2048}, false},
		{"custom", Options{DataDir: "/d", EnvdPath: "/e", VCPUs: 1, MemoryMB: 256, DiskMB: 4096}, [3]int{1, 256, 4096}, false},
		{"no data dir", Options{EnvdPath: "/e"}, [3]int{}, true},
		{"no envd", Options{DataDir: "/d"}, [3]int{}, true},
		{"negative", Options{DataDir: "/d", EnvdPath: "/e", DiskMB: -1}, [3]int{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.in
			err := o.defaults()
			if (err != nil) != tt.wantErr {
				t.Fatalf("defaults() error = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil {
				if got := [3]int{o.VCPUs, o.MemoryMB, o.DiskMB}; got != tt.want {
					t.Errorf("shape = %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	want := layout("base-0123456789abcdef", dir, Options{VCPUs: 2, MemoryMB: 512, DiskMB: 2048})
	b := fmt.Sprintf(`{"ID":%q,"Dir":"/elsewhere","VCPUs":2,"MemoryMB":512,"DiskMB":2048}`, want.ID)
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), []byte(b), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load() = %+v, want %+v", got, want)
	}
}

// TestBuildAndBoot builds the real base template (debootstrap, kernel,
// initramfs, ext4) into the shared test data dir, builds it again from the
// cache, and boots it under QEMU TCG: the guest must reach cocoon-init and
// envd must answer /health over the guest's own network.
func TestBuildAndBoot(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the base template build and boot")
	}
	if os.Geteuid() != 0 {
		t.Skip("not root: debootstrap and the rootfs build need root")
	}
	dataDir := os.Getenv("COCOON_TEST_DATA_DIR")
	if dataDir == "" {
		dataDir = "/var/lib/cocoon-test"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	envd, stub := testEnvd(t)

	opts := Options{DataDir: dataDir, EnvdPath: envd,
		Progress: func(step string, pct int) { t.Logf("[%3d%%] %s", pct, step) }}
	start := time.Now()
	tmpl, err := Build(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	first := time.Since(start)
	start = time.Now()
	again, err := Build(ctx, Options{DataDir: dataDir, EnvdPath: envd})
	if err != nil {
		t.Fatal(err)
	}
	cached := time.Since(start)
	t.Logf("build: %v (first in this run), %v (cached)", first.Round(time.Millisecond), cached.Round(time.Millisecond))
	if !reflect.DeepEqual(again, tmpl) {
		t.Errorf("cached Build = %+v, want %+v", again, tmpl)
	}
	if cached > 30*time.Second {
		t.Errorf("cached Build took %v, want seconds", cached)
	}
	loaded, err := Load(tmpl.Dir)
	if err != nil || !reflect.DeepEqual(loaded, tmpl) {
		t.Errorf("Load() = %+v, %v; want %+v", loaded, err, tmpl)
	}
	for _, p := range []string{
		tmpl.Kernel, tmpl.Initrd, tmpl.RootfsImage,
		filepath.Join(tmpl.RootfsDir, strings.TrimPrefix(guest.EnvdPath, "/")),
		filepath.Join(tmpl.RootfsDir, strings.TrimPrefix(guest.InitPath, "/")),
		filepath.Join(tmpl.RootfsDir, "etc/sudoers.d/user"),
		filepath.Join(tmpl.RootfsDir, "home/user"),
		filepath.Join(tmpl.RootfsDir, "usr/bin/tini"),
	} {
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(tmpl.RootfsDir, "etc/passwd")); err != nil || !bytes.Contains(b, []byte("\nuser:x:1000:1000::/home/user:/bin/bash\n")) {
		t.Errorf("etc/passwd lacks user (uid 1000, /bin/bash): %v", err)
	}
	if st, err := os.Stat(tmpl.RootfsImage); err != nil || st.Size() != int64(tmpl.DiskMB)<<20 {
		t.Errorf("image size: %v, want %d MiB", err, tmpl.DiskMB)
	}

	// A TCG cold boot stalled once in CI with no console output past 1.2 s
	// of kernel time (under a heavy load, never reproduced in 18 boots
	// at 3x contention); one stalled boot is retried so the test judges
	// the image, and the stalled console is kept in the log.
	if console, stalled := boot(t, ctx, tmpl, stub); stalled {
		t.Logf("the first boot stalled; retrying once. Its console:\n%s", console)
		if console, stalled := boot(t, ctx, tmpl, stub); stalled {
			t.Fatalf("the boot stalled twice; console:\n%s", console)
		}
	}
}

// bootStall is how long a boot may print nothing before cocoon-init's
// marker before boot gives up on it.
const bootStall = time.Minute

// boot starts the template under QEMU TCG with a restricted user-mode
// network (it reaches only the host's loopback through a forwarded port),
// waits for cocoon-init's marker on the console, then for envd's /health.
// It reports whether the boot stalled (printed nothing for bootStall
// before the marker), with the console output.
func boot(t *testing.T, ctx context.Context, tmpl *runtime.Template, stub bool) (out string, stalled bool) {
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: skipping the boot", tool)
		}
	}
	dir := t.TempDir()
	overlay := filepath.Join(dir, "overlay.qcow2")
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", tmpl.RootfsImage, overlay).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	port := freePort(t)
	cmdline, err := CmdLine(guest.Net{
		Addr:    mustPrefix("10.0.2.15/24"),
		Gateway: mustAddr("10.0.2.2"),
	}.Args()...)
	if err != nil {
		t.Fatal(err)
	}
	console := filepath.Join(dir, "console.log")
	args := []string{
		"-M", "microvm", "-accel", "tcg", "-cpu", "max",
		"-m", strconv.Itoa(tmpl.MemoryMB), "-smp", strconv.Itoa(tmpl.VCPUs),
		"-nodefaults", "-no-reboot", "-display", "none",
		"-serial", "file:" + console,
		"-kernel", tmpl.Kernel, "-initrd", tmpl.Initrd, "-append", cmdline,
		"-drive", "id=root,file=" + overlay + ",format=qcow2,if=none",
		"-device", "virtio-blk-device,drive=root",
		"-netdev", fmt.Sprintf("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:%d-:%d", port, guest.EnvdPort),
		"-device", "virtio-net-device,netdev=n0",
	}
	qctx, stop := context.WithCancel(ctx)
	defer stop()
	cmd := exec.CommandContext(qctx, "qemu-system-x86_64", args...)
	var qout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &qout, &qout
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		stop()
		<-exited
		if t.Failed() {
			b, _ := os.ReadFile(console)
			t.Logf("qemu: %s\nconsole:\n%s", qout.String(), b)
		}
	}()

	deadline := time.After(3 * time.Minute)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	marker := false
	printed, grew := 0, time.Now()
	for !marker {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("qemu exited before cocoon-init ran: %v", err)
		case <-deadline:
			t.Fatal("no cocoon-init marker on the console after 3 minutes")
		case <-tick.C:
			b, _ := os.ReadFile(console)
			marker = bytes.Contains(b, []byte(guest.ReadyMarker))
			if len(b) != printed {
				printed, grew = len(b), time.Now()
			} else if !marker && time.Since(grew) > bootStall {
				return string(b), true
			}
		}
	}
	t.Logf("cocoon-init reached after %v", time.Since(start).Round(time.Millisecond))

	client := &http.Client{Timeout: 2 * time.Second}
	url := fmt.Sprintf("http://127.0.0.1:%d/health", port)
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if stub && resp.StatusCode != http.StatusNoContent {
				t.Fatalf("GET /health = %d, want 204", resp.StatusCode)
			}
			if resp.StatusCode/100 == 2 {
				t.Logf("envd /health %d after %v", resp.StatusCode, time.Since(start).Round(time.Millisecond))
				break
			}
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("qemu exited before envd answered: %v", err)
		case <-deadline:
			t.Fatalf("envd did not answer %s: %v", url, err)
		case <-tick.C:
		}
	}
	b, _ := os.ReadFile(console)
	if !bytes.Contains(b, []byte("cocoon-init: eth0 10.0.2.15/24 via 10.0.2.2")) {
		t.Error("console lacks cocoon-init's eth0 line")
	}
	return string(b), false
}

// testEnvd returns a static envd to bake in: the real one when cmd/envd
// builds, else a stub that answers GET /health with 204 on port 49983.
// stub reports which.
func testEnvd(t *testing.T) (path string, stub bool) {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "envd")
	build := func(wd string, pkg string) error {
		cmd := exec.Command(goBin, "build", "-trimpath", "-o", out, pkg)
		cmd.Dir = wd
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		b, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, b)
		}
		return nil
	}
	if m, _ := filepath.Glob("../../../cmd/envd/*.go"); len(m) > 0 {
		if err := build("../../..", "./cmd/envd"); err == nil {
			t.Log("envd: built from cmd/envd")
			return out, false
		} else {
			t.Logf("cmd/envd does not build, using a stub: %v", err)
		}
	}
	src := filepath.Join(dir, "stub")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "go.mod"), []byte("module envdstub\n\ngo 1.22\n"), 0o644)
	os.WriteFile(filepath.Join(src, "main.go"), []byte(stubEnvd), 0o644)
	if err := build(src, "."); err != nil {
		t.Fatalf("build envd stub: %v", err)
	}
	return out, true
}

const stubEnvd = `package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	fmt.Println("envd-stub: listening on :49983")
	if err := http.ListenAndServe("0.0.0.0:49983", nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
`

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func mustAddr(s string) netip.Addr     { return netip.MustParseAddr(s) }
