package oci

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrUnsafe marks an archive entry that would write outside the target
// directory (absolute path, "..", or a link leaving the target).
var ErrUnsafe = errors.New("unsafe archive entry")

// ExtractOptions tune Extract.
type ExtractOptions struct {
	// Whiteouts applies OCI whiteouts (".wh.<name>" deletes <name> from the
	// tree below, ".wh..wh..opq" empties a directory of what lower layers
	// put there) instead of extracting them as files.
	Whiteouts bool
	// StrictLinks refuses symbolic links whose target leaves the target
	// directory (absolute, or climbing above it). Root filesystems need
	// absolute links; uploaded COPY archives do not.
	StrictLinks bool
	// NoOwner skips chown (entries belong to the extracting user).
	NoOwner bool
	// MaxBytes caps the total size of regular files (0: no limit).
	MaxBytes int64
}

// Extract unpacks the tar stream r into dir, keeping permissions,
// ownership, modification times, hard links, symbolic links, device nodes
// and FIFOs. It never writes outside dir: names are cleaned and refused when
// absolute or climbing out, no path component inside dir is followed if it
// is a symbolic link, and hard links must point inside dir.
func Extract(r io.Reader, dir string, opts ExtractOptions) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("extract: %w", err)
	}
	x := &extractor{root: dir, opts: opts, layer: map[string]bool{}}
	tr := tar.NewReader(r)
	var dirs []*tar.Header
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("extract: read archive: %w", err)
		}
		if err := x.entry(h, tr); err != nil {
			return err
		}
		if h.Typeflag == tar.TypeDir {
			dirs = append(dirs, h)
		}
	}
	// Directory times last: extracting their children changed them.
	for i := len(dirs) - 1; i >= 0; i-- {
		name, _ := CleanName(dirs[i].Name)
		if name == "" {
			continue
		}
		p := filepath.Join(dir, name)
		_ = os.Chtimes(p, dirs[i].ModTime, dirs[i].ModTime)
	}
	return nil
}

type extractor struct {
	root    string
	opts    ExtractOptions
	written int64
	// layer records the paths this archive created, so that an opaque
	// whiteout only removes what lower layers left.
	layer map[string]bool
}

// CleanName returns the cleaned relative form of an archive name ("" for
// the root itself) or ErrUnsafe if it is absolute or climbs out.
func CleanName(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: absolute path %q", ErrUnsafe, name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: %q climbs out with ..", ErrUnsafe, name)
		}
	}
	c := path.Clean(name)
	if c == "." {
		return "", nil
	}
	return c, nil
}

// linkInside reports whether a symbolic link at name (relative to the root)
// pointing to target stays inside the root.
func linkInside(name, target string) bool {
	if strings.HasPrefix(target, "/") {
		return false
	}
	joined := path.Join(path.Dir(name), target)
	return joined != ".." && !strings.HasPrefix(joined, "../")
}

// safeParent makes sure every directory between root and rel's parent is a
// real directory (creating missing ones), so nothing is written through a
// symbolic link.
func (x *extractor) safeParent(rel string) error {
	parts := strings.Split(rel, "/")
	p := x.root
	for _, part := range parts[:len(parts)-1] {
		p = filepath.Join(p, part)
		fi, err := os.Lstat(p)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if err := os.Mkdir(p, 0o755); err != nil {
				return fmt.Errorf("extract: %w", err)
			}
		case err != nil:
			return fmt.Errorf("extract: %w", err)
		case fi.Mode()&os.ModeSymlink != 0:
			return fmt.Errorf("%w: %q goes through the symbolic link %q", ErrUnsafe, rel, strings.TrimPrefix(p, x.root+"/"))
		case !fi.IsDir():
			return fmt.Errorf("extract: %q: %q is not a directory", rel, strings.TrimPrefix(p, x.root+"/"))
		}
	}
	return nil
}

func (x *extractor) entry(h *tar.Header, r io.Reader) error {
	rel, err := CleanName(h.Name)
	if err != nil {
		return err
	}
	if rel == "" {
		if h.Typeflag == tar.TypeDir && !x.opts.NoOwner {
			_ = os.Chmod(x.root, os.FileMode(h.Mode)&os.ModePerm|modeBits(h.Mode))
			_ = os.Lchown(x.root, h.Uid, h.Gid)
		}
		return nil
	}
	if err := x.safeParent(rel); err != nil {
		return err
	}
	base := path.Base(rel)
	dirRel := path.Dir(rel)
	if x.opts.Whiteouts && strings.HasPrefix(base, ".wh.") {
		target := filepath.Join(x.root, dirRel)
		if base == ".wh..wh..opq" {
			ents, err := os.ReadDir(target)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("extract: opaque %s: %w", dirRel, err)
			}
			for _, e := range ents {
				child := path.Join(dirRel, e.Name())
				if dirRel == "." {
					child = e.Name()
				}
				if !x.layer[child] {
					if err := os.RemoveAll(filepath.Join(target, e.Name())); err != nil {
						return fmt.Errorf("extract: opaque %s: %w", dirRel, err)
					}
				}
			}
			return nil
		}
		if err := os.RemoveAll(filepath.Join(target, strings.TrimPrefix(base, ".wh."))); err != nil {
			return fmt.Errorf("extract: whiteout %s: %w", rel, err)
		}
		return nil
	}
	p := filepath.Join(x.root, rel)
	x.layer[rel] = true
	// A later entry replaces an earlier one, except directory over directory.
	if fi, err := os.Lstat(p); err == nil && !(fi.IsDir() && h.Typeflag == tar.TypeDir) {
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("extract: replace %s: %w", rel, err)
		}
	}
	mode := os.FileMode(h.Mode) & os.ModePerm
	switch h.Typeflag {
	case tar.TypeDir:
		if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("extract: %w", err)
		}
	case tar.TypeReg, tar.TypeRegA:
		x.written += h.Size
		if x.opts.MaxBytes > 0 && x.written > x.opts.MaxBytes {
			return fmt.Errorf("extract: more than %d bytes of files", x.opts.MaxBytes)
		}
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("extract: %w", err)
		}
		_, err = io.Copy(f, r)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("extract: write %s: %w", rel, err)
		}
	case tar.TypeSymlink:
		if x.opts.StrictLinks && !linkInside(rel, h.Linkname) {
			return fmt.Errorf("%w: symbolic link %q -> %q leaves the target", ErrUnsafe, rel, h.Linkname)
		}
		if err := os.Symlink(h.Linkname, p); err != nil {
			return fmt.Errorf("extract: %w", err)
		}
	case tar.TypeLink:
		target, err := CleanName(h.Linkname)
		if err != nil || target == "" {
			return fmt.Errorf("%w: hard link %q -> %q leaves the target", ErrUnsafe, rel, h.Linkname)
		}
		if err := x.safeParent(target); err != nil {
			return err
		}
		if err := os.Link(filepath.Join(x.root, target), p); err != nil {
			return fmt.Errorf("extract: hard link %s: %w", rel, err)
		}
		return nil // the link shares the target's inode and metadata
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		m := uint32(mode)
		switch h.Typeflag {
		case tar.TypeChar:
			m |= unix.S_IFCHR
		case tar.TypeBlock:
			m |= unix.S_IFBLK
		default:
			m |= unix.S_IFIFO
		}
		if err := unix.Mknod(p, m, int(unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor)))); err != nil {
			return fmt.Errorf("extract: mknod %s: %w", rel, err)
		}
	case tar.TypeXGlobalHeader:
		return nil
	default:
		return nil // unknown kinds (e.g. sparse GNU extensions) are skipped
	}
	if !x.opts.NoOwner {
		if err := os.Lchown(p, h.Uid, h.Gid); err != nil {
			return fmt.Errorf("extract: chown %s: %w", rel, err)
		}
	}
	if h.Typeflag != tar.TypeSymlink {
		// After chown, which clears setuid/setgid bits.
		if err := os.Chmod(p, mode|modeBits(h.Mode)); err != nil {
			return fmt.Errorf("extract: chmod %s: %w", rel, err)
		}
		_ = os.Chtimes(p, h.ModTime, h.ModTime)
	} else {
		ts := []unix.Timespec{unix.NsecToTimespec(h.ModTime.UnixNano()), unix.NsecToTimespec(h.ModTime.UnixNano())}
		_ = unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	return nil
}

// modeBits turns the setuid, setgid and sticky bits of a tar mode into
// os.FileMode bits.
func modeBits(m int64) os.FileMode {
	var out os.FileMode
	if m&0o4000 != 0 {
		out |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		out |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		out |= os.ModeSticky
	}
	return out
}

// CheckArchive reads a whole tar stream and refuses it if any entry is
// unsafe to extract into a directory (see Extract with StrictLinks), or if
// it holds more than maxBytes of files (0: no limit). It returns the number
// of entries.
func CheckArchive(r io.Reader, maxBytes int64) (int, error) {
	tr := tar.NewReader(r)
	n := 0
	var total int64
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("read archive: %w", err)
		}
		n++
		rel, err := CleanName(h.Name)
		if err != nil {
			return n, err
		}
		switch h.Typeflag {
		case tar.TypeSymlink:
			if !linkInside(rel, h.Linkname) {
				return n, fmt.Errorf("%w: symbolic link %q -> %q leaves the target", ErrUnsafe, h.Name, h.Linkname)
			}
		case tar.TypeLink:
			if t, err := CleanName(h.Linkname); err != nil || t == "" {
				return n, fmt.Errorf("%w: hard link %q -> %q leaves the target", ErrUnsafe, h.Name, h.Linkname)
			}
		case tar.TypeChar, tar.TypeBlock:
			return n, fmt.Errorf("%w: device node %q", ErrUnsafe, h.Name)
		}
		total += h.Size
		if maxBytes > 0 && total > maxBytes {
			return n, fmt.Errorf("archive holds more than %d bytes", maxBytes)
		}
	}
}
