package cocoon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
)

// uploadBatch is how many bytes of small files CopyIn sends per request;
// larger files are streamed one by one.
const uploadBatch = 8 << 20

// CopyIn copies the local file or directory src to dst in the sandbox (a
// directory's content lands under dst, which is made). Small files go in
// batches of WriteMany, large ones as streams.
func (f *Filesystem) CopyIn(ctx context.Context, src, dst string) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return f.copyFileIn(ctx, src, dst)
	}
	var batch []WriteEntry
	size := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		_, err := f.WriteMany(ctx, batch)
		batch, size = nil, 0
		return err
	}
	if _, err := f.MakeDir(ctx, dst); err != nil {
		return err
	}
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := path.Join(dst, filepath.ToSlash(rel))
		switch {
		case d.IsDir():
			if rel != "." {
				_, err = f.MakeDir(ctx, target) // empty directories too
			}
			return err
		case !d.Type().IsRegular():
			return nil // symlinks, devices: not copied
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Size() > uploadBatch/4 {
			return f.copyFileIn(ctx, p, target)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		batch = append(batch, WriteEntry{Path: target, Data: data})
		if size += len(data); size >= uploadBatch {
			return flush()
		}
		return nil
	})
	if err != nil {
		return err
	}
	return flush()
}

func (f *Filesystem) copyFileIn(ctx context.Context, src, dst string) error {
	r, err := os.Open(src)
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = f.WriteStream(ctx, dst, r)
	return err
}

// CopyOut copies the file or directory src in the sandbox to the local
// dst (a directory's content lands under dst, which is made).
func (f *Filesystem) CopyOut(ctx context.Context, src, dst string) error {
	st, err := f.Stat(ctx, src)
	if err != nil {
		return err
	}
	if st.Type != FileTypeDirectory {
		return f.copyFileOut(ctx, src, dst)
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	// The depth bounds how deep a tree is copied, not how many files.
	entries, err := f.List(ctx, src, 64)
	if err != nil {
		return err
	}
	for _, e := range entries {
		rel, err := filepath.Rel(st.Path, e.Path)
		if err != nil || rel == ".." || filepath.IsAbs(rel) || len(rel) > 2 && rel[:3] == "../" {
			return fmt.Errorf("copy %s: entry %s is outside it", src, e.Path)
		}
		target := filepath.Join(dst, rel)
		switch e.Type {
		case FileTypeDirectory:
			err = os.MkdirAll(target, 0o755)
		case FileTypeFile:
			err = f.copyFileOut(ctx, e.Path, target)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (f *Filesystem) copyFileOut(ctx context.Context, src, dst string) (err error) {
	r, err := f.ReadStream(ctx, src)
	if err != nil {
		return err
	}
	defer r.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	w, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, w.Close()) }()
	if _, err := io.Copy(w, r); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return nil
}
