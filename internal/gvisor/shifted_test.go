package gvisor

import (
	"context"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/internal/runtime"
	"github.com/cocoon-run/cocoon/internal/template/guest"
)

// TestShiftedTreeOwners (issue 18): a tree unpacked onto guest.TreeHostID's
// range (a template build's export, an image) is served with the guest's
// owners and modes, unprivileged and as root: stat inside shows uid u for a
// file the host has as TreeHostID+u, setuid bits are there, and a 0600 file
// of the guest's root reads (the gofer opens it through the view).
func TestShiftedTreeOwners(t *testing.T) {
	need(t)
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("no static busybox to stat with")
	}
	tree := filepath.Join(t.TempDir(), "rootfs")
	if out, err := exec.Command("cp", "-a", fx.rootfs, tree).CombinedOutput(); err != nil {
		t.Fatalf("copy rootfs: %v: %s", err, out)
	}
	files := []struct {
		path string
		mode os.FileMode
		uid  int
	}{
		{"bin/busybox", 0o755, 0},
		{"etc/secret", 0o600, 0},
		{"home/user/mine", 0o644, 1000},
		{"usr/bin/suid", os.ModeSetuid | 0o755, 0},
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		p := filepath.Join(tree, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		body := []byte(f.path)
		if f.path == "bin/busybox" {
			body = bb
		}
		if err := os.WriteFile(p, body, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, f.uid, f.uid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	// Shift every owner, as oci.ExtractAs leaves them.
	err = filepath.WalkDir(tree, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		if err := os.Lchown(p, guest.TreeHostID+int(st.Uid), guest.TreeHostID+int(st.Gid)); err != nil {
			return err
		}
		if fi.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 {
			return os.Chmod(p, fi.Mode()) // chown cleared them
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, asRoot := range []bool{false, true} {
		t.Run(fmt.Sprintf("asRoot=%v", asRoot), func(t *testing.T) {
			d, err := New(context.Background(), Config{Runsc: fx.runsc, StateDir: t.TempDir(), CgroupParent: "/gvt-test", AsRoot: asRoot})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Remove(d.ids.dir) })
			dir := t.TempDir()
			tpl := &runtime.Template{ID: fmt.Sprintf("s%d", time.Now().UnixNano()), Dir: dir, RootfsDir: tree, VCPUs: 1, MemoryMB: 512}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := d.BuildSnapshot(ctx, tpl, newSlot(t), filepath.Join(dir, "build")); err != nil {
				t.Fatal(err)
			}
			_, spec := restore(t, d, runtime.Source{Template: tpl})
			out, err := d.runsc(ctx, "exec", spec.ID, "/bin/busybox", "stat", "-c", "%n %u:%g %a", "/", "/etc/secret", "/home/user/mine", "/usr/bin/suid")
			if err != nil {
				t.Fatal(err)
			}
			want := "/ 0:0 755\n/etc/secret 0:0 600\n/home/user/mine 1000:1000 644\n/usr/bin/suid 0:0 4755"
			if got := strings.TrimSpace(string(out)); got != want {
				t.Errorf("inside:\n%s\nwant\n%s", got, want)
			}
			if code, body := call(t, spec.Slot, "GET", "file", url.Values{"path": {"/etc/secret"}}); code != 200 || body != "etc/secret" {
				t.Errorf("read /etc/secret: %d %q", code, body)
			}
		})
	}
}
