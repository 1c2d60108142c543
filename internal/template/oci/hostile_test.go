package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/internal/template/guest"
)

// Regression tests for issue 18: a build's export (or an image layer) is
// written by a tenant and unpacked on the host as root.

// TestExtractLeavesOutDevices: a device node in an export was created on
// the host, world-readable (a loop device became readable through it).
func TestExtractLeavesOutDevices(t *testing.T) {
	root := t.TempDir()
	var skipped []string
	arch := tarOf(t,
		entry{name: "loop", typ: tar.TypeBlock, mode: 0o666},
		entry{name: "dev/mem", typ: tar.TypeChar, mode: 0o666},
		entry{name: "pipe", typ: tar.TypeFifo, mode: 0o666},
		file("ok", "fine"),
	)
	err := Extract(arch, root, ExtractOptions{Skipped: func(name, _ string) { skipped = append(skipped, name) }})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"loop", "dev/mem", "pipe"} {
		if _, err := os.Lstat(filepath.Join(root, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: got %v, want not created", name, err)
		}
	}
	if len(skipped) != 3 {
		t.Errorf("skipped: got %v, want 3 entries", skipped)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "ok")); string(b) != "fine" {
		t.Errorf("ok: got %q", b)
	}
}

// TestExtractDirThenSymlink: a directory entry replaced by a symbolic link
// to a host directory; the directory times pass at the end touched the
// host directory through the link.
func TestExtractDirThenSymlink(t *testing.T) {
	parent := t.TempDir()
	outside := filepath.Join(parent, "outside")
	root := filepath.Join(parent, "root")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	before := time.Unix(1600000000, 0)
	if err := os.Chtimes(outside, before, before); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		entries []entry
		wantErr bool
	}{
		{"dir then link", []entry{dir("d"), symlink("d", outside)}, false},
		{"dir then link then dir", []entry{dir("d"), symlink("d", outside), dir("d/x")}, true},
		{"dir then link then file", []entry{dir("d"), symlink("d", outside), file("d/f", "x")}, true},
		{"link then hard link through it", []entry{symlink("l", outside), hardlink("h", "l/f")}, true},
		{"whiteout through a link", []entry{symlink("l", outside), file("l/.wh.f", "")}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.RemoveAll(root)
			err := Extract(tarOf(t, tt.entries...), root, ExtractOptions{Whiteouts: true})
			if (err != nil) != tt.wantErr {
				t.Errorf("Extract: got %v, want error %v", err, tt.wantErr)
			}
			fi, err := os.Stat(outside)
			if err != nil {
				t.Fatal(err)
			}
			if !fi.ModTime().Equal(before) {
				t.Errorf("outside mtime: got %v, want %v (changed through the link)", fi.ModTime(), before)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Errorf("outside holds %d entries, want 0", len(ents))
			}
		})
	}
}

// TestExtractSizeCap: a 3 GiB file filled the host's disk. The cap refuses
// it at its header, before any of its data is written.
func TestExtractSizeCap(t *testing.T) {
	root := t.TempDir()
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := tw.WriteHeader(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3 << 30})
		if err == nil {
			_, err = io.Copy(tw, io.LimitReader(zeros{}, 3<<30))
		}
		pw.CloseWithError(err)
	}()
	err := Extract(pr, root, ExtractOptions{MaxBytes: 64 << 20})
	pr.CloseWithError(errors.New("done"))
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
	if fi, err := os.Stat(filepath.Join(root, "big")); err == nil {
		t.Errorf("big: %d bytes written, want none", fi.Size())
	}
	// Many empty files count too.
	var many []entry
	for i := range 200 {
		many = append(many, file("f"+string(rune('a'+i%26))+string(rune('a'+i/26)), ""))
	}
	if err := Extract(tarOf(t, many...), t.TempDir(), ExtractOptions{MaxBytes: 100 * entryOverhead}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("200 empty files under a 100-entry cap: got %v, want ErrTooLarge", err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestExtractOwners: owners beyond what a build can map become the
// overflow id.
func TestExtractOwners(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to set ownership")
	}
	root := t.TempDir()
	arch := tarOf(t,
		entry{name: "mine", typ: tar.TypeReg, mode: 0o644, uid: 1000, gid: 1000},
		entry{name: "huge", typ: tar.TypeReg, mode: 0o644, uid: 1 << 30, gid: 70000},
		// A tree ExtractAs made, sent to another node: its ids stand.
		entry{name: "shifted", typ: tar.TypeReg, mode: 0o644, uid: guest.TreeHostID + 1000, gid: guest.TreeHostID},
	)
	if err := Extract(arch, root, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		uid, gid uint32
	}{{"mine", 1000, 1000}, {"huge", OverflowID, OverflowID}, {"shifted", guest.TreeHostID + 1000, guest.TreeHostID}}
	for _, tt := range tests {
		fi, err := os.Lstat(filepath.Join(root, tt.name))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != tt.uid || st.Gid != tt.gid {
			t.Errorf("%s: got %d:%d, want %d:%d", tt.name, st.Uid, st.Gid, tt.uid, tt.gid)
		}
	}
}

// TestExtractCapAcrossLayers: an image's layers share one cap (Counted), so
// many layers each under it cannot fill the disk together.
func TestExtractCapAcrossLayers(t *testing.T) {
	root := t.TempDir()
	var counted int64
	opts := ExtractOptions{Whiteouts: true, MaxBytes: 3500, Counted: &counted} // 1000 bytes + 512 per entry each
	if err := Extract(tarOf(t, file("a", string(make([]byte, 1000)))), root, opts); err != nil {
		t.Fatal(err)
	}
	if err := Extract(tarOf(t, file("b", string(make([]byte, 1000)))), root, opts); err != nil {
		t.Fatal(err)
	}
	if err := Extract(tarOf(t, file("c", string(make([]byte, 1000)))), root, opts); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("third layer: got %v, want ErrTooLarge (counted %d)", err, counted)
	}
}

// TestExtractAsSetuidHarmless is issue 18's first attack, done with a real
// setuid-root binary: a build's RUN step made a setuid-root copy of a
// program, the node unpacked the export on the host as root, and user
// nobody ran it with euid 0. ExtractAs unpacks it in a user namespace whose
// root is guest.TreeHostID on the host: the copy keeps its setuid bit (a
// sandbox's sudo needs it) but is setuid to that id, no device node is
// made, and every owner is shifted. Extract, as root, is the control: the
// same stream gives nobody euid 0 (the test can fail).
func TestExtractAsSetuidHarmless(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a user namespace with a host id range, a command run as nobody")
	}
	idBin, err := os.ReadFile("/usr/bin/id")
	if err != nil {
		t.Skip("no /usr/bin/id to copy:", err)
	}
	stream := func() *bytes.Buffer {
		return tarOf(t,
			entry{name: "./", typ: tar.TypeDir, mode: 0o755, uid: 1000, gid: 1000},
			dir("bin"),
			entry{name: "bin/rootid", typ: tar.TypeReg, mode: 0o4755, body: string(idBin)},
			entry{name: "bin/groupid", typ: tar.TypeReg, mode: 0o2755, gid: 42, body: string(idBin)},
			entry{name: "home/user/notes", typ: tar.TypeReg, mode: 0o600, uid: 1000, gid: 1000, body: "mine"},
			entry{name: "huge", typ: tar.TypeReg, mode: 0o644, uid: 1 << 30, gid: 70000},
			entry{name: "preshifted", typ: tar.TypeReg, mode: 0o644, uid: guest.TreeHostID + 5, gid: guest.TreeHostID},
			entry{name: "dev/loop0", typ: tar.TypeBlock, mode: 0o666},
			entry{name: "dev/mem", typ: tar.TypeChar, mode: 0o666},
		)
	}
	// A directory every host user can enter, as /var/lib is (t.TempDir is 0700).
	open, err := os.MkdirTemp("", "cocoon-extract-as-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(open) })
	if err := os.Chmod(open, 0o755); err != nil {
		t.Fatal(err)
	}
	euidAsNobody := func(tree, prog string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(tree, prog), "-u")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s as nobody: %v: %s", prog, err, out)
		}
		return strings.TrimSpace(string(out))
	}

	control := filepath.Join(open, "as-root")
	if err := Extract(stream(), control, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := euidAsNobody(control, "bin/rootid"); got != "0" {
		t.Fatalf("control (Extract as root): nobody got euid %s, want 0: the test proves nothing", got)
	}

	tree := filepath.Join(open, "unprivileged")
	var skipped []string
	err = ExtractAs(context.Background(), stream(), tree, guest.TreeHostID, ExtractOptions{
		Skipped: func(name, why string) { skipped = append(skipped, name+": "+why) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := euidAsNobody(tree, "bin/rootid"), fmt.Sprint(guest.TreeHostID); got != want {
		t.Errorf("nobody ran the setuid-root copy with euid %s, want %s", got, want)
	}
	if len(skipped) != 2 {
		t.Errorf("skipped: got %q, want the two device nodes", skipped)
	}
	for _, name := range []string{"dev/loop0", "dev/mem"} {
		if _, err := os.Lstat(filepath.Join(tree, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: got %v, want not created", name, err)
		}
	}
	// Every file on the host belongs to the shifted range, setuid and
	// setgid bits kept for the guest; the tree's root is the guest root's.
	base := uint32(guest.TreeHostID)
	tests := []struct {
		name     string
		uid, gid uint32
		mode     os.FileMode
	}{
		{".", base, base, os.ModeDir | 0o755},
		{"bin", base, base, os.ModeDir | 0o755},
		{"bin/rootid", base, base, os.ModeSetuid | 0o755},
		{"bin/groupid", base, base + 42, os.ModeSetgid | 0o755},
		{"home", base, base, os.ModeDir | 0o755},
		{"home/user/notes", base + 1000, base + 1000, 0o600},
		{"huge", base + OverflowID, base + OverflowID, 0o644},
		{"preshifted", base + OverflowID, base + OverflowID, 0o644},
	}
	for _, tt := range tests {
		fi, err := os.Lstat(filepath.Join(tree, tt.name))
		if err != nil {
			t.Error(err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != tt.uid || st.Gid != tt.gid || fi.Mode() != tt.mode {
			t.Errorf("%s: got %d:%d %v, want %d:%d %v", tt.name, st.Uid, st.Gid, fi.Mode(), tt.uid, tt.gid, tt.mode)
		}
	}
	if got, err := guest.TreeBase(tree); err != nil || got != base {
		t.Errorf("TreeBase: got %d, %v; want %d", got, err, base)
	}
}

// TestExtractAsErrors: the child's refusals come back as the sentinels
// Extract returns, and a link planted by the stream leads nowhere the
// child could write (the host's ids are not mapped in its namespace).
func TestExtractAsErrors(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a user namespace with a host id range")
	}
	ctx := context.Background()
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	err := ExtractAs(ctx, tarOf(t, symlink("l", "/etc"), file("l/passwd", "x")), filepath.Join(root, "a"), guest.TreeHostID, ExtractOptions{})
	if !errors.Is(err, ErrUnsafe) {
		t.Errorf("through a link: got %v, want ErrUnsafe", err)
	}
	var counted int64
	err = ExtractAs(ctx, tarOf(t, file("big", string(make([]byte, 4000)))), filepath.Join(root, "b"), guest.TreeHostID,
		ExtractOptions{MaxBytes: 3000, Counted: &counted})
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("over the cap: got %v, want ErrTooLarge", err)
	}
	if err := ExtractAs(ctx, tarOf(t, file("a", "12345")), filepath.Join(root, "c"), guest.TreeHostID,
		ExtractOptions{Counted: &counted}); err != nil || counted == 0 {
		t.Errorf("counted: got %d, %v", counted, err)
	}
}
