package oci

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
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
	)
	if err := Extract(arch, root, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		uid, gid uint32
	}{{"mine", 1000, 1000}, {"huge", OverflowID, OverflowID}}
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
