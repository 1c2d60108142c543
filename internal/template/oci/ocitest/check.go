package ocitest

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// FileWant is what a path of an unpacked tree must be.
type FileWant struct {
	Path     string
	Mode     os.FileMode
	UID, GID uint32
}

// CheckFiles reports every path under root whose mode or owner differs from
// its FileWant.
func CheckFiles(t testing.TB, root string, want []FileWant) {
	t.Helper()
	for _, w := range want {
		fi, err := os.Lstat(filepath.Join(root, w.Path))
		if err != nil {
			t.Errorf("%s: %v", w.Path, err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode() != w.Mode || st.Uid != w.UID || st.Gid != w.GID {
			t.Errorf("%s: got %v %d:%d, want %v %d:%d", w.Path, fi.Mode(), st.Uid, st.Gid, w.Mode, w.UID, w.GID)
		}
	}
}

// CheckHardLink reports when b under root is not a hard link of a.
func CheckHardLink(t testing.TB, root, a, b string) {
	t.Helper()
	fa, _ := os.Stat(filepath.Join(root, a))
	fb, _ := os.Stat(filepath.Join(root, b))
	if fa == nil || fb == nil || !os.SameFile(fa, fb) {
		t.Errorf("%s is not a hard link of %s", b, a)
	}
}
