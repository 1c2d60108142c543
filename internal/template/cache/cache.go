// Package cache stores build artifacts under <root>/<kind>/<key>, where key
// hashes every input of the artifact. An artifact is built in a temporary
// directory beside its final place and renamed into place, so a directory
// that exists under its key is always complete; a file lock serializes
// concurrent builders of the same key, across processes.
package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Key returns a stable hex key for the given inputs. Parts are
// length-prefixed so that ("ab","c") and ("a","bc") differ.
func Key(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		io.WriteString(h, strconv.Itoa(len(p)))
		io.WriteString(h, ":")
		io.WriteString(h, p)
	}
	return hex.EncodeToString(h.Sum(nil))[:24]
}

// HashFile returns the hex sha256 of a file's contents.
func HashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// BuildFunc fills dir, an empty directory, with the artifact.
type BuildFunc func(ctx context.Context, dir string) error

// Ensure returns the directory of the artifact <root>/<kind>/<key>, calling
// build to make it when it does not exist yet. hit reports whether it was
// already there.
func Ensure(ctx context.Context, root, kind, key string, build BuildFunc) (dir string, hit bool, err error) {
	if kind == "" || key == "" || strings.ContainsRune(key, '/') || strings.Contains(kind, "..") {
		return "", false, fmt.Errorf("cache: bad kind %q or key %q", kind, key)
	}
	parent := filepath.Join(root, kind)
	dir = filepath.Join(parent, key)
	if exists(dir) {
		return dir, true, nil
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", false, fmt.Errorf("cache: %w", err)
	}
	unlock, err := lock(ctx, filepath.Join(parent, "."+key+".lock"))
	if err != nil {
		return "", false, err
	}
	defer unlock()
	// Another process may have finished it while we waited for the lock.
	if exists(dir) {
		return dir, true, nil
	}
	// Leftovers of a crashed build of this key are garbage: we hold the lock.
	old, _ := filepath.Glob(filepath.Join(parent, ".tmp-"+key+"-*"))
	for _, o := range old {
		removeAll(o)
	}
	tmp, err := os.MkdirTemp(parent, ".tmp-"+key+"-")
	if err != nil {
		return "", false, fmt.Errorf("cache: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		removeAll(tmp)
		return "", false, fmt.Errorf("cache: %w", err)
	}
	if err := build(ctx, tmp); err != nil {
		removeAll(tmp)
		return "", false, fmt.Errorf("build %s/%s: %w", kind, key, err)
	}
	if err := syncDir(tmp); err != nil {
		removeAll(tmp)
		return "", false, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		removeAll(tmp)
		return "", false, fmt.Errorf("cache: %w", err)
	}
	if err := syncDir(parent); err != nil {
		return "", false, err
	}
	return dir, false, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// syncDir flushes a directory's entries so the rename publishes a durable
// artifact.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("cache: sync %s: %w", dir, err)
	}
	return nil
}

// lock takes an exclusive flock on path, giving up when ctx is done.
func lock(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cache: lock: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- syscall.Flock(int(f.Fd()), syscall.LOCK_EX) }()
	select {
	case err := <-done:
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("cache: lock %s: %w", path, err)
		}
		return func() { f.Close() }, nil
	case <-ctx.Done():
		// Closing the file releases a lock that the goroutine may still get.
		go func() { <-done; f.Close() }()
		return nil, fmt.Errorf("cache: wait for lock %s: %w", path, ctx.Err())
	}
}
