// Package datadir keeps Cocoon's data directory private to Cocoon's user:
// it holds the database, the node and admin tokens, the secrets key,
// template trees with their guests' setuid files, snapshots of sandbox
// memory and the sandboxes' logs. See docs/security.md.
package datadir

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
)

// DirMode and FileMode are the modes of the data directory and of the
// secret files directly in it.
const (
	DirMode  fs.FileMode = 0o700
	FileMode fs.FileMode = 0o600
)

// secretFiles are the files in the data directory that hold secrets or
// tenant data; Secure narrows their mode to FileMode.
var secretFiles = []string{
	"cocoon.db", "cocoon.db-wal", "cocoon.db-shm", "cocoon.db-journal",
	"admin.token", "node.token", "secrets.key", "sdk.env",
}

// Secure creates dir (mode 0700) when missing and makes an existing one
// private: a data directory other users can read, write or enter is
// narrowed to 0700, and each secret file in it to 0600, with one warning
// line per change. A data directory owned by another user is refused.
func Secure(dir string, log *slog.Logger) error {
	if err := os.MkdirAll(dir, DirMode); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("data dir %s belongs to uid %d, not to this user (uid %d): refusing to use it", dir, st.Uid, os.Geteuid())
	}
	if err := narrow(dir, fi.Mode(), DirMode, log); err != nil {
		return err
	}
	for _, name := range secretFiles {
		p := filepath.Join(dir, name)
		fi, err := os.Lstat(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("data dir: %s is not a regular file", p)
		}
		if err := narrow(p, fi.Mode(), FileMode, log); err != nil {
			return err
		}
	}
	return nil
}

// narrow removes the group and other bits of p's mode when it has any.
func narrow(p string, mode, want fs.FileMode, log *slog.Logger) error {
	if mode.Perm()&0o077 == 0 {
		return nil
	}
	if err := os.Chmod(p, want); err != nil {
		return fmt.Errorf("make %s private: %w", p, err)
	}
	if log != nil {
		log.Warn("was open to other host users: made private", "path", p, "was", fmt.Sprintf("%#o", mode.Perm()), "now", fmt.Sprintf("%#o", want))
	}
	return nil
}
