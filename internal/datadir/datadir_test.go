package datadir

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// asNobody runs name args as the host user nobody and returns its error.
func asNobody(t *testing.T, name string, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	return cmd.CombinedOutput()
}

// openTempDir is a directory every host user can enter, as /var/lib is.
func openTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "cocoon-datadir-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestSecureHidesFromOtherUsers is issue 18's attack: cocoon.db was 0644 in
// a 0755 data dir, and the setuid copy of bash a build left in a template
// layer ran as root for user nobody. After Secure, nobody can neither read
// the database nor reach the layer tree.
func TestSecureHidesFromOtherUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: files owned by root, a command run as nobody")
	}
	dir := filepath.Join(openTempDir(t), "data")
	layer := filepath.Join(dir, "templates", "layers", "k", "rootfs", "bin")
	if err := os.MkdirAll(layer, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, "cocoon.db")
	if err := os.WriteFile(db, []byte("envd tokens"), 0o644); err != nil {
		t.Fatal(err)
	}
	suid := filepath.Join(layer, "rootbash")
	if err := os.WriteFile(suid, []byte("#!/bin/sh\nid -u\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(suid, 0o4755); err != nil {
		t.Fatal(err)
	}
	// The attack works before Secure (what the old layout allowed).
	if out, err := asNobody(t, "cat", db); err != nil {
		t.Fatalf("before Secure, nobody could not read the database (%v: %s): the test proves nothing", err, out)
	}

	if err := Secure(dir, nil); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
	}{
		{"read the database", []string{"cat", db}},
		{"list the data dir", []string{"ls", dir}},
		{"run a setuid file of a layer", []string{suid}},
		{"stat the layer tree", []string{"stat", layer}},
	}
	for _, tt := range tests {
		if out, err := asNobody(t, tt.args[0], tt.args[1:]...); err == nil {
			t.Errorf("%s as nobody: got success (%s), want permission denied", tt.name, out)
		}
	}
	for p, want := range map[string]os.FileMode{dir: DirMode, db: FileMode} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: got mode %v (%v), want %#o", p, fi.Mode().Perm(), err, want)
		}
	}
}

func TestSecureCreates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "data")
	if err := Secure(dir, nil); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != DirMode {
		t.Fatalf("got %v (%v), want %#o", fi.Mode().Perm(), err, DirMode)
	}
}

func TestSecureRefusesForeignOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	dir := t.TempDir()
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := Secure(dir, nil); err == nil {
		t.Fatal("got nil, want an error for a data dir of another user")
	}
}
