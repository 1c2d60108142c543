package rootfs

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/cocoon-run/cocoon/internal/template/guest"
)

// TestMakeExt4ShiftedTree: a tree unpacked onto guest.TreeHostID's range
// (oci.ExtractAs) gives an image whose files have the guest's owners and
// keep setuid bits (sudo in a QEMU sandbox), though the tree lives below a
// 0700 directory the unprivileged mkfs.ext4 cannot search.
func TestMakeExt4ShiftedTree(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: chown and a user namespace")
	}
	if _, err := exec.LookPath("debugfs"); err != nil {
		t.Skip("no debugfs")
	}
	private := t.TempDir() // 0700, root's
	tree := filepath.Join(private, "rootfs")
	base := guest.TreeHostID
	files := []struct {
		path     string
		mode     os.FileMode
		uid, gid int
	}{
		{"usr/bin/sudo", os.ModeSetuid | 0o755, 0, 0},
		{"home/user/secret", 0o600, 1000, 1000},
		{"etc/shadow", 0o640, 0, 42},
	}
	for _, f := range files {
		p := filepath.Join(tree, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.path), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p, base+f.uid, base+f.gid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := filepath.Walk(tree, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.IsDir() {
			err = os.Lchown(p, base, base)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(private, "rootfs.ext4")
	if err := MakeExt4(context.Background(), tree, img, 16); err != nil {
		t.Fatal(err)
	}
	mode := regexp.MustCompile(`Mode: +(\d+)`)
	owner := regexp.MustCompile(`User: +(\d+) +Group: +(\d+)`)
	for _, f := range files {
		out, err := exec.Command("debugfs", "-R", "stat /"+f.path, img).CombinedOutput()
		if err != nil {
			t.Fatalf("debugfs %s: %v: %s", f.path, err, out)
		}
		m, o := mode.FindStringSubmatch(string(out)), owner.FindStringSubmatch(string(out))
		if m == nil || o == nil {
			t.Fatalf("debugfs %s: no mode and owner in:\n%s", f.path, out)
		}
		perm := uint32(f.mode.Perm())
		if f.mode&os.ModeSetuid != 0 {
			perm |= 0o4000
		}
		got := fmt.Sprintf("%s %s:%s", m[1], o[1], o[2])
		if want := fmt.Sprintf("0%o %d:%d", perm, f.uid, f.gid); got != want {
			t.Errorf("%s in the image: got %s, want %s", f.path, got, want)
		}
	}
}
