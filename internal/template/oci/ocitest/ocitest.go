// Package ocitest serves and makes OCI images for tests: an in-memory
// registry (go-containerregistry's) that can ask for basic-auth
// credentials, single-layer images of a directory tree (ownership,
// permissions, symbolic and hard links kept), and a push over plain HTTP.
// The oci package's tests and the end-to-end tests' registry helper
// (tests/registry) share it.
package ocitest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Handler is an in-memory OCI registry serving whatever is pushed to it.
// When user is not empty every request must carry those basic-auth
// credentials (else 401 with a Basic challenge). logger (nil: discard)
// receives the registry's request log.
func Handler(user, pass string, logger *log.Logger) http.Handler {
	if logger == nil {
		logger = log.New(io.Discard, "", 0)
	}
	h := registry.New(registry.Logger(logger))
	if user == "" {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"credentials required"}]}`, http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Push writes img to ref over plain HTTP (test registries have no TLS).
func Push(ref string, img v1.Image, auth authn.Authenticator) error {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return fmt.Errorf("push: %w", err)
	}
	if err := remote.Write(r, img, remote.WithAuth(auth)); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	return nil
}

// Image is a linux/amd64 image of layers (lowest first) with config cfg.
func Image(cfg v1.Config, layers ...v1.Layer) (v1.Image, error) {
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = cfg
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	return img, nil
}

// BytesLayer is a layer holding the tar (or tar.gz) archive data.
func BytesLayer(data []byte) (v1.Layer, error) {
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return l, nil
}

// TreeOptions tune TreeLayer.
type TreeOptions struct {
	// Skip leaves out the entry at rel (slash-separated, relative to the
	// root) and, for a directory, everything below it.
	Skip func(rel string) bool
	// Rewrite replaces the contents of the regular files it names (by
	// rel) with what their function returns.
	Rewrite map[string]func(data []byte) []byte
}

// TreeLayer is a single layer holding the directory tree root as it is on
// disk: numeric owners, permissions (setuid, setgid, sticky), modification
// times, symbolic links, hard links inside the tree, device nodes and
// FIFOs. Sockets are left out. The archive is gzipped once, in memory.
func TreeLayer(root string, opts TreeOptions) (v1.Layer, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return nil, fmt.Errorf("tree layer: %w", err)
	}
	if err := WriteTree(zw, root, opts); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("tree layer: %w", err)
	}
	return BytesLayer(buf.Bytes())
}

// WriteTree writes the tree root to w as a tar archive (see TreeLayer).
func WriteTree(w io.Writer, root string, opts TreeOptions) error {
	tw := tar.NewWriter(w)
	links := map[[2]uint64]string{} // (dev, inode) → first name in the archive
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		if opts.Skip != nil && opts.Skip(rel) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.Type()&fs.ModeSocket != 0 {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		target := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if target, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, target)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		hdr.Name = rel
		if fi.IsDir() {
			hdr.Name += "/"
		}
		// Numeric owners only: the host's names mean nothing in the tree.
		hdr.Uname, hdr.Gname = "", ""
		hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
		hdr.Format = tar.FormatPAX
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no stat", p)
		}
		if !fi.Mode().IsRegular() {
			return tw.WriteHeader(hdr)
		}
		if st.Nlink > 1 {
			key := [2]uint64{uint64(st.Dev), st.Ino}
			if first, ok := links[key]; ok {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
				return tw.WriteHeader(hdr)
			}
			links[key] = rel
		}
		return writeFile(tw, hdr, p, opts.Rewrite[rel])
	})
	if err != nil {
		return fmt.Errorf("archive %s: %w", root, err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("archive %s: %w", root, err)
	}
	return nil
}

func writeFile(tw *tar.Writer, hdr *tar.Header, p string, rewrite func([]byte) []byte) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	var r io.Reader = f
	if rewrite != nil {
		data, err := io.ReadAll(f)
		if err != nil {
			return err
		}
		data = rewrite(data)
		hdr.Size = int64(len(data))
		r = bytes.NewReader(data)
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	n, err := io.Copy(tw, r)
	if err != nil {
		return err
	}
	if n != hdr.Size {
		return errors.New(p + " changed while being archived")
	}
	return nil
}
