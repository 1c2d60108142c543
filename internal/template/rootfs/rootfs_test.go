package rootfs

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

func testDataDir(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: skipping a build that needs the network")
	}
	if os.Geteuid() != 0 {
		t.Skip("not root: debootstrap and mkfs need root")
	}
	if d := os.Getenv("COCOON_TEST_DATA_DIR"); d != "" {
		return d
	}
	return "/var/lib/cocoon-test"
}

// TestDebootstrap builds the real bookworm tree into the shared test cache.
func TestDebootstrap(t *testing.T) {
	root := testDataDir(t)
	mirror, err := HostMirror("bookworm")
	if err != nil {
		t.Fatal(err)
	}
	d := Debian{Suite: "bookworm", Mirror: mirror, Variant: "minbase", Include: DefaultInclude, Install: DefaultInstall}
	tree, err := Debootstrap(context.Background(), root+"/cache", d, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"usr/bin/python3", "usr/bin/tini", "usr/bin/sudo", "bin/ip",
		"usr/bin/pip3", "usr/lib/python3.11/venv/__init__.py", "usr/bin/node", "usr/bin/npm", "usr/bin/git",
		"usr/bin/curl", "usr/bin/wget", "usr/bin/gcc", "usr/bin/g++", "usr/bin/make", "usr/bin/unzip", "usr/bin/jq",
		"etc/ssl/certs/ca-certificates.crt", dpkgLeanPath} {
		if _, err := os.Stat(tree + "/" + p); err != nil {
			t.Error(err)
		}
	}
	// dpkgLean was in place before apt installed the tools: their
	// documentation directories are empty (dpkg keeps directories).
	if m, _ := filepath.Glob(tree + "/usr/share/doc/git/RelNotes/*"); len(m) > 0 {
		t.Errorf("%s was unpacked despite dpkgLean", m[0])
	}
	if _, err := os.Stat(tree + "/usr/share/man/man1/git.1.gz"); err == nil {
		t.Error("git's manual page was unpacked despite dpkgLean")
	}
}

// TestPruneLean checks what Customize removes from a tree: documentation
// but its copyright files, translations but English, apt's lists and
// caches, pip's EXTERNALLY-MANAGED; and that it never follows a link out
// of the tree.
func TestPruneLean(t *testing.T) {
	tree, outside := t.TempDir(), t.TempDir()
	files := []string{
		"usr/share/doc/git/copyright", "usr/share/doc/git/README.md", "usr/share/doc/git/changelog.gz",
		"usr/share/man/man1/git.1.gz", "usr/share/info/dir", "usr/share/lintian/overrides/git",
		"usr/share/locale/de/LC_MESSAGES/git.mo", "usr/share/locale/en_GB/LC_MESSAGES/git.mo",
		"usr/share/locale/locale.alias", "var/cache/apt/pkgcache.bin", "var/cache/apt/archives/x.deb",
		"var/cache/apt/archives/lock", "var/lib/apt/lists/deb_dists_bookworm_InRelease", "var/lib/apt/lists/lock",
		"usr/lib/python3.11/EXTERNALLY-MANAGED", "usr/lib/python3.11/os.py",
	}
	for _, f := range append(files, "victim/keep") {
		root := tree
		if f == "victim/keep" {
			root = outside
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// An absolute link in a guest tree points into the host.
	if err := os.Symlink(filepath.Join(outside, "victim"), filepath.Join(tree, "usr/share/doc/evil")); err != nil {
		t.Fatal(err)
	}
	if err := pruneLean(tree); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{
		"usr/share/doc/git/copyright": true, "usr/share/locale/en_GB/LC_MESSAGES/git.mo": true,
		"usr/share/locale/locale.alias": true, "var/cache/apt/archives/lock": true,
		"var/lib/apt/lists/lock": true, "usr/lib/python3.11/os.py": true,
	}
	for _, f := range files {
		_, err := os.Stat(filepath.Join(tree, f))
		if got := err == nil; got != want[f] {
			t.Errorf("%s exists = %v, want %v", f, got, want[f])
		}
	}
	if _, err := os.Stat(filepath.Join(outside, "victim/keep")); err != nil {
		t.Errorf("a file behind a link out of the tree was removed: %v", err)
	}
}
