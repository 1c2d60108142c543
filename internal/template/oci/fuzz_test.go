package oci

import (
	"archive/tar"
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// FuzzExtract feeds arbitrary tar streams to Extract, as a build's export
// or an image layer would: whatever the stream, nothing is written outside
// the target, no device node, FIFO or socket appears in it, and no more
// than MaxBytes of file data is written. CheckArchive must not panic on it
// either.
func FuzzExtract(f *testing.F) {
	seed := func(entries ...entry) {
		f.Add(tarOf(&testing.T{}, entries...).Bytes())
	}
	seed(file("a", "x"), dir("d"), file("d/f", "y"), symlink("l", "d"), hardlink("h", "a"))
	seed(file("../escape", "x"))
	seed(file("/abs", "x"))
	seed(dir("d"), symlink("d", "/"), file("d/etc-passwd", "x"))
	seed(symlink("l", ".."), file("l/x", "x"))
	seed(hardlink("h", "../../etc/passwd"))
	seed(entry{name: "dev", typ: tar.TypeBlock, mode: 0o666}, entry{name: "p", typ: tar.TypeFifo, mode: 0o666})
	seed(entry{name: "suid", typ: tar.TypeReg, body: "x", mode: 0o4755, uid: 1 << 20})
	seed(file(".wh..wh..opq", ""), file("x/.wh.y", ""), file(".wh...", ""))
	seed(file("big", string(make([]byte, 4096))))
	f.Fuzz(func(t *testing.T, data []byte) {
		parent, err := os.MkdirTemp("", "fuzz-extract-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(parent)
		root := filepath.Join(parent, "root")
		canary := filepath.Join(parent, "canary")
		if err := os.WriteFile(canary, []byte("canary"), 0o600); err != nil {
			t.Fatal(err)
		}
		const maxBytes = 1 << 16
		_ = Extract(bytes.NewReader(data), root, ExtractOptions{Whiteouts: true, MaxBytes: maxBytes})
		_, _ = CheckArchive(bytes.NewReader(data), maxBytes)

		ents, err := os.ReadDir(parent)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if e.Name() != "root" && e.Name() != "canary" {
				t.Fatalf("wrote %q outside the target", e.Name())
			}
		}
		if b, err := os.ReadFile(canary); err != nil || string(b) != "canary" {
			t.Fatalf("canary changed: %q %v", b, err)
		}
		var total int64
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			switch {
			case d.Type()&(fs.ModeDevice|fs.ModeCharDevice|fs.ModeNamedPipe|fs.ModeSocket) != 0:
				t.Fatalf("%s: a %v on the host", p, d.Type())
			case d.Type().IsRegular():
				if fi, err := d.Info(); err == nil {
					total += fi.Size()
				}
			}
			return nil
		})
		if total > maxBytes {
			t.Fatalf("%d bytes of files written, cap %d", total, maxBytes)
		}
	})
}
