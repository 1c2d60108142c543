package orchestrator

import (
	"maps"
	"os"
	"path/filepath"
	"testing"
)

// TestWriteProfileKeepsTheParentsEnvironment: a layer's ENV goes over the
// parent's (or the image's), which stays; odd values survive the quoting.
func TestWriteProfileKeepsTheParentsEnvironment(t *testing.T) {
	tree := t.TempDir()
	if err := writeProfile(tree, map[string]string{"FROM_IMAGE": "img", "SHARED": "old", "QUOTE": "it's a $HOME \"x\""}); err != nil {
		t.Fatal(err)
	}
	if err := writeProfile(tree, map[string]string{"SHARED": "new", "STEP": "s", "bad name": "skipped"}); err != nil {
		t.Fatal(err)
	}
	got := readProfile(tree)
	want := map[string]string{"FROM_IMAGE": "img", "SHARED": "new", "STEP": "s", "QUOTE": "it's a $HOME \"x\""}
	if !maps.Equal(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
	if err := writeProfile(tree, nil); err != nil || !maps.Equal(readProfile(tree), want) {
		t.Fatalf("an empty ENV changed the profile: %v, %v", err, readProfile(tree))
	}
}

// TestTreeWritesStayInside: after an export the node writes a few things
// into the tenant's tree as root; a tmp that linked to a host directory
// made it world-writable (chmod 1777 followed the link), and a
// profile.d link made the profile land outside.
func TestTreeWritesStayInside(t *testing.T) {
	parent := t.TempDir()
	outside := filepath.Join(parent, "host-etc")
	tree := filepath.Join(parent, "tree")
	for _, d := range []string{outside, filepath.Join(tree, "etc")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range []string{"tmp", "run", "etc/profile.d"} {
		if err := os.Symlink(outside, filepath.Join(tree, l)); err != nil {
			t.Fatal(err)
		}
	}
	if err := guestDirs(tree); err != nil {
		t.Fatal(err)
	}
	if err := writeProfile(tree, map[string]string{"A": "b"}); err == nil {
		t.Error("writeProfile through etc/profile.d -> outside: got success")
	}
	if fi, err := os.Stat(outside); err != nil || fi.Mode() != os.ModeDir|0o755 {
		t.Errorf("outside: got %v (%v), want drwxr-xr-x", fi.Mode(), err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("outside: got %d entries, want none", len(ents))
	}
	for _, d := range []string{"tmp", "run", "proc"} {
		if fi, err := os.Lstat(filepath.Join(tree, d)); err != nil || !fi.IsDir() {
			t.Errorf("%s: got %v, %v; want a real directory", d, fi, err)
		}
	}
	if fi, _ := os.Lstat(filepath.Join(tree, "tmp")); fi.Mode() != os.ModeDir|os.ModeSticky|0o777 {
		t.Errorf("tmp: got %v, want 1777", fi.Mode())
	}
}
