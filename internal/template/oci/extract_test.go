package oci

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/internal/template/oci/ocitest"
)

// entry is one tar entry of a test archive.
type entry struct {
	name     string
	typ      byte
	body     string
	link     string
	mode     int64
	uid, gid int
}

func file(name, body string) entry {
	return entry{name: name, typ: tar.TypeReg, body: body, mode: 0o644}
}
func dir(name string) entry { return entry{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, target string) entry {
	return entry{name: name, typ: tar.TypeSymlink, link: target, mode: 0o777}
}
func hardlink(name, target string) entry { return entry{name: name, typ: tar.TypeLink, link: target} }

func tarOf(t *testing.T, entries ...entry) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			Size: int64(len(e.body)), ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX,
		}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

// listTree returns "path type" lines for every entry under root.
func listTree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		kind := "f"
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			kind = "l"
		case fi.IsDir():
			kind = "d"
		}
		out = append(out, rel+" "+kind)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// TestExtractRefusesEscapes checks that no archive writes outside the
// target: the sandbox is a parent dir holding the target and a canary.
func TestExtractRefusesEscapes(t *testing.T) {
	tests := []struct {
		name    string
		entries []entry
		opts    ExtractOptions
	}{
		{"dotdot", []entry{file("../evil", "x")}, ExtractOptions{}},
		{"dotdot inside", []entry{dir("a"), file("a/../../evil", "x")}, ExtractOptions{}},
		{"absolute", []entry{file("/evil", "x")}, ExtractOptions{}},
		{"hardlink out", []entry{hardlink("h", "../canary")}, ExtractOptions{}},
		{"hardlink absolute", []entry{hardlink("h", "/etc/passwd")}, ExtractOptions{}},
		{"strict symlink absolute", []entry{symlink("l", "/etc")}, ExtractOptions{StrictLinks: true}},
		{"strict symlink climbing", []entry{dir("a"), symlink("a/l", "../../x")}, ExtractOptions{StrictLinks: true}},
		{"write through symlink", []entry{symlink("l", ".."), file("l/evil", "x")}, ExtractOptions{}},
		{"write through absolute symlink", []entry{symlink("l", "/tmp"), file("l/evil", "x")}, ExtractOptions{}},
		{"hardlink through symlink", []entry{symlink("l", ".."), hardlink("h", "l/canary")}, ExtractOptions{}},
		{"whiteout through symlink", []entry{symlink("l", ".."), file("l/.wh.canary", "")}, ExtractOptions{Whiteouts: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			canary := filepath.Join(parent, "canary")
			if err := os.WriteFile(canary, []byte("keep"), 0o644); err != nil {
				t.Fatal(err)
			}
			target := filepath.Join(parent, "target")
			err := Extract(tarOf(t, tt.entries...), target, tt.opts)
			if !errors.Is(err, ErrUnsafe) {
				t.Fatalf("Extract: got %v, want ErrUnsafe", err)
			}
			got := listTree(t, parent)
			for _, p := range got {
				if !strings.HasPrefix(p, "target") && p != "canary f" {
					t.Errorf("written outside the target: %s", p)
				}
			}
			if b, err := os.ReadFile(canary); err != nil || string(b) != "keep" {
				t.Errorf("canary: %q, %v", b, err)
			}
			if _, err := os.Stat("/evil"); err == nil {
				t.Errorf("/evil was written")
			}
		})
	}
}

func TestCheckArchive(t *testing.T) {
	tests := []struct {
		name    string
		entries []entry
		max     int64
		wantErr bool
	}{
		{"ok", []entry{dir("a"), file("a/b", "hello"), symlink("a/l", "b"), hardlink("a/h", "a/b")}, 0, false},
		{"dotdot", []entry{file("../x", "")}, 0, true},
		{"absolute", []entry{file("/x", "")}, 0, true},
		{"symlink out", []entry{symlink("l", "../../x")}, 0, true},
		{"symlink absolute", []entry{symlink("l", "/etc/passwd")}, 0, true},
		{"hardlink out", []entry{hardlink("h", "../x")}, 0, true},
		{"device", []entry{{name: "d", typ: tar.TypeChar, mode: 0o600}}, 0, true},
		{"too big", []entry{file("a", "12345"), file("b", "67890")}, 8, true},
		{"just fits", []entry{file("a", "12345"), file("b", "678")}, 8, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := CheckArchive(tarOf(t, tt.entries...), tt.max)
			if (err != nil) != tt.wantErr {
				t.Fatalf("CheckArchive: got %v, want error %v", err, tt.wantErr)
			}
		})
	}
}

func TestExtractMaxBytes(t *testing.T) {
	err := Extract(tarOf(t, file("a", "12345"), file("b", "67890")), t.TempDir(), ExtractOptions{MaxBytes: 8})
	if err == nil || !strings.Contains(err.Error(), "more than 8 bytes") {
		t.Fatalf("got %v, want a size error", err)
	}
}

func TestExtractWhiteouts(t *testing.T) {
	root := t.TempDir()
	lower := tarOf(t,
		dir("etc"), file("etc/keep", "k"), file("etc/gone", "g"),
		dir("opq"), file("opq/old1", "1"), dir("opq/sub"), file("opq/sub/old2", "2"),
		dir("d"), file("d/x", "x"),
	)
	upper := tarOf(t,
		file("etc/.wh.gone", ""),
		file(".wh.d", ""),
		dir("opq"), file("opq/new", "n"), file("opq/.wh..wh..opq", ""),
		file("etc/.wh.never-existed", ""),
	)
	for i, l := range []*bytes.Buffer{lower, upper} {
		if err := Extract(l, root, ExtractOptions{Whiteouts: true}); err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
	}
	got := strings.Join(listTree(t, root), ",")
	want := "etc d,etc/keep f,opq d,opq/new f"
	if got != want {
		t.Errorf("tree:\n got %s\nwant %s", got, want)
	}

	// Without Whiteouts the markers are plain files.
	plain := t.TempDir()
	if err := Extract(tarOf(t, file(".wh.x", "")), plain, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(plain, ".wh.x")); err != nil {
		t.Errorf("whiteout file not kept verbatim: %v", err)
	}
}

func TestExtractKeepsMetadata(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to set ownership")
	}
	root := t.TempDir()
	arch := tarOf(t,
		entry{name: "bin", typ: tar.TypeDir, mode: 0o755},
		entry{name: "bin/sudo", typ: tar.TypeReg, body: "#!suid", mode: 0o4755, uid: 0, gid: 0},
		entry{name: "bin/wall", typ: tar.TypeReg, body: "sgid", mode: 0o2755, uid: 0, gid: 5},
		entry{name: "tmp", typ: tar.TypeDir, mode: 0o1777},
		entry{name: "home/user/f", typ: tar.TypeReg, body: "mine", mode: 0o600, uid: 1000, gid: 1001},
		entry{name: "home/user/link", typ: tar.TypeSymlink, link: "f", uid: 1000, gid: 1001},
		entry{name: "home/user/abs", typ: tar.TypeSymlink, link: "/etc/passwd"},
		entry{name: "bin/sudo2", typ: tar.TypeLink, link: "bin/sudo"},
		entry{name: "fifo", typ: tar.TypeFifo, mode: 0o640},
	)
	if err := Extract(arch, root, ExtractOptions{Whiteouts: true}); err != nil {
		t.Fatal(err)
	}
	tests := []ocitest.FileWant{
		{Path: "bin/sudo", Mode: 0o755 | os.ModeSetuid, UID: 0, GID: 0},
		{Path: "bin/wall", Mode: 0o755 | os.ModeSetgid, UID: 0, GID: 5},
		{Path: "tmp", Mode: 0o777 | os.ModeSticky | os.ModeDir, UID: 0, GID: 0},
		{Path: "home/user/f", Mode: 0o600, UID: 1000, GID: 1001},
		{Path: "home/user/link", Mode: 0o777 | os.ModeSymlink, UID: 1000, GID: 1001},
	}
	ocitest.CheckFiles(t, root, tests)
	if _, err := os.Lstat(filepath.Join(root, "fifo")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("fifo: got %v, want it left out", err)
	}
	if l, _ := os.Readlink(filepath.Join(root, "home/user/abs")); l != "/etc/passwd" {
		t.Errorf("absolute symlink: got %q (root filesystems need them)", l)
	}
	ocitest.CheckHardLink(t, root, "bin/sudo", "bin/sudo2")
	if fi, _ := os.Stat(filepath.Join(root, "home/user/f")); fi == nil || !fi.ModTime().Equal(time.Unix(1700000000, 0)) {
		t.Errorf("modification time not kept")
	}
}

func TestExtractReplaces(t *testing.T) {
	root := t.TempDir()
	// A later layer turns a file into a directory and a directory into a symlink.
	if err := Extract(tarOf(t, file("a", "file"), dir("b"), file("b/c", "c")), root, ExtractOptions{Whiteouts: true}); err != nil {
		t.Fatal(err)
	}
	if err := Extract(tarOf(t, dir("a"), file("a/x", "x"), symlink("b", "a")), root, ExtractOptions{Whiteouts: true}); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(listTree(t, root), ",")
	if want := "a d,a/x f,b l"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func TestCleanName(t *testing.T) {
	tests := []struct {
		in, want string
		err      bool
	}{
		{"a/b", "a/b", false},
		{"./a//b/", "a/b", false},
		{".", "", false},
		{"./", "", false},
		{"a/./b", "a/b", false},
		{"/a", "", true},
		{"..", "", true},
		{"a/../b", "", true},
	}
	for _, tt := range tests {
		got, err := CleanName(tt.in)
		if got != tt.want || (err != nil) != tt.err {
			t.Errorf("CleanName(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

// An image's layers seldom carry a "./" entry: the tree's root and the
// directories the stream only implies are 0755, or the guest's user could
// run nothing (a 0700 root made every exec as `user` fail with EACCES).
func TestExtractRootAndImpliedDirsOpen(t *testing.T) {
	tree := filepath.Join(t.TempDir(), "rootfs")
	if err := Extract(tarOf(t, file("usr/bin/tool", "x")), tree, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, rel := range []string{".", "usr", "usr/bin"} {
		fi, err := os.Stat(filepath.Join(tree, rel))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := fi.Mode().Perm(), os.FileMode(0o755); got != want {
			t.Errorf("%s: mode %v, want %v", rel, got, want)
		}
	}
}
