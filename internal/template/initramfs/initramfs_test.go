package initramfs

import (
	"bytes"
	"compress/gzip"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/cocoon-run/cocoon/internal/template/guest"
	"github.com/cocoon-run/cocoon/internal/template/kernel"
)

// TestCPIOWriter checks the archive with GNU cpio, the reference reader.
func TestCPIOWriter(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio not installed")
	}
	var buf bytes.Buffer
	c := newCPIOWriter(&buf)
	c.Dir("bin", 0o755)
	c.File("bin/hello", 0o755, []byte("hi\n"))
	c.File("odd", 0o644, []byte("12345"))
	c.Symlink("bin/sh", "hello")
	c.CharDev("console", 0o600, 5, 1)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-itv", "--quiet")
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v: %s", err, out)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(l)
		got = append(got, f[0]+" "+strings.Join(f[len(f)-1-strings.Count(l, " -> ")*2:], " "))
	}
	want := []string{"drwxr-xr-x bin", "-rwxr-xr-x bin/hello", "-rw-r--r-- odd", "lrwxrwxrwx bin/sh -> hello", "crw------- console"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("cpio -t =\n%q\nwant\n%q", got, want)
	}
	dir := t.TempDir()
	cmd = exec.Command("cpio", "-id", "--quiet", "odd", "bin/hello")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v: %s", err, out)
	}
	for name, want := range map[string]string{"odd": "12345", "bin/hello": "hi\n"} {
		if b, _ := os.ReadFile(filepath.Join(dir, name)); string(b) != want {
			t.Errorf("%s = %q, want %q", name, b, want)
		}
	}
}

func TestFindModules(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/block/virtio_blk.ko.xz", "kernel/net/core/net-failover.ko"} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(dir, p), nil, 0o644)
	}
	os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/drivers/virtio/virtio.ko\n"), 0o644)
	got, err := FindModules(dir, []string{"virtio_ring", "virtio", "virtio_blk", "net_failover"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range got {
		names = append(names, m.Name+"="+filepath.Base(m.Path))
	}
	want := []string{"virtio_ring=virtio_ring.ko", "virtio_blk=virtio_blk.ko.xz", "net_failover=net-failover.ko"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("FindModules() = %q, want %q", names, want)
	}
	if _, err := FindModules(dir, []string{"nope"}); err == nil {
		t.Error("FindModules(nope) succeeded, want error")
	}
}

func TestCheckStatic(t *testing.T) {
	if err := checkStatic("/bin/sh"); err == nil {
		t.Error("checkStatic(/bin/sh) accepted a dynamic binary")
	}
	if _, err := os.Stat(DefaultBusybox); err != nil {
		t.Skip("busybox-static not installed")
	}
	if err := checkStatic(DefaultBusybox); err != nil {
		t.Error(err)
	}
}

// TestBuild builds the real initramfs from the cached kernel and checks
// its contents with GNU cpio.
func TestBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the kernel download")
	}
	root := os.Getenv("COCOON_TEST_DATA_DIR")
	if root == "" {
		root = "/var/lib/cocoon-test"
	}
	ctx := context.Background()
	k, err := kernel.Fetch(ctx, root+"/cache")
	if err != nil {
		t.Fatal(err)
	}
	p, err := Build(ctx, root+"/cache", Options{Kernel: k})
	if err != nil {
		t.Fatal(err)
	}
	p2, err := Build(ctx, root+"/cache", Options{Kernel: k})
	if err != nil || p2 != p {
		t.Fatalf("second Build = %q, %v; want the cached %q", p2, err, p)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-it", "--quiet")
	cmd.Stdin = zr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -t: %v", err)
	}
	list := "\n" + string(out)
	want := []string{"init", "bin/busybox", "bin/switch_root", "dev/console"}
	for _, m := range guest.Modules {
		want = append(want, "lib/modules/"+m+".ko")
	}
	for _, w := range want {
		if !strings.Contains(list, "\n"+w+"\n") {
			t.Errorf("initramfs lacks %s", w)
		}
	}
	st, _ := os.Stat(p)
	t.Logf("initramfs %s: %d KiB", p, st.Size()>>10)
}
