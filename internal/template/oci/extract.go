package oci

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cocoon-run/cocoon/internal/template/guest"
)

// ErrUnsafe marks an archive entry that would write outside the target
// directory (absolute path, "..", or a link leaving the target).
var ErrUnsafe = errors.New("unsafe archive entry")

// ErrTooLarge marks an archive holding more than ExtractOptions.MaxBytes.
var ErrTooLarge = errors.New("archive too large")

// MaxID is the highest owner (uid or gid) an extracted entry keeps: the ids
// a build sandbox or an image can map. Higher ones become OverflowID.
const (
	MaxID      = 65535
	OverflowID = 65534
)

// entryOverhead is what each entry counts against MaxBytes besides its
// data (an inode and a directory entry), so that a flood of empty files is
// capped too.
const entryOverhead = 512

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
	// MaxBytes caps the total size of regular files plus entryOverhead per
	// entry (0: no limit); more is ErrTooLarge.
	MaxBytes int64
	// Counted (optional) carries what earlier archives (an image's lower
	// layers) counted against MaxBytes; Extract adds this one's.
	Counted *int64
	// Skipped (optional) is told about each entry left out: device nodes,
	// FIFOs and sockets are never created on the host.
	Skipped func(name, why string)

	// inTreeNS: the extraction runs in ExtractAs's child, where only the
	// guest's ids exist.
	inTreeNS bool
}

// Extract unpacks the tar stream r into dir as untrusted input, keeping
// permissions (setuid and setgid bits included: the tree is a guest's root
// filesystem, kept where other host users cannot reach it, see
// docs/security.md), owners up to MaxID, modification times, hard links and
// symbolic links. It leaves out device nodes, FIFOs and sockets. It never
// writes outside dir: every operation goes through an os.Root on dir, names
// are cleaned and refused when absolute or climbing out, no path component
// inside dir is followed if it is a symbolic link (not even one the stream
// itself created), and hard links must point inside dir.
func Extract(r io.Reader, dir string, opts ExtractOptions) error {
	// dir is the root of a guest's tree: 0755 like any "/" (an image's
	// layers seldom carry a "./" entry to say so, and a 0700 root kept the
	// guest's user from running anything). Other host users are kept out
	// by the 0700 directory a layer lives in.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("extract: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("extract: %w", err)
	}
	defer root.Close()
	x := &extractor{root: root, opts: opts, layer: map[string]bool{}, realDirs: map[string]bool{}}
	if opts.Counted != nil {
		x.written = *opts.Counted
		defer func() { *opts.Counted = x.written }()
	}
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
	// Directory times last: extracting their children changed them. A
	// later entry may have replaced the directory by a symbolic link: only
	// real directories are touched, and never through a link.
	for i := len(dirs) - 1; i >= 0; i-- {
		name, _ := CleanName(dirs[i].Name)
		if name == "" || x.throughLink(name) {
			continue
		}
		if fi, err := root.Lstat(name); err == nil && fi.IsDir() {
			_ = root.Chtimes(name, dirs[i].ModTime, dirs[i].ModTime)
		}
	}
	return nil
}

type extractor struct {
	root    *os.Root
	opts    ExtractOptions
	written int64
	// layer records the paths this archive created, so that an opaque
	// whiteout only removes what lower layers left.
	layer map[string]bool
	// realDirs are directories known to be real (not links) since the last
	// removal: safeParent checks each once, not once per entry below it.
	realDirs map[string]bool
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
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: NUL in %q", ErrUnsafe, name)
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

// throughLink reports whether a directory between the root and rel (not
// rel itself) is a symbolic link.
func (x *extractor) throughLink(rel string) bool {
	parts := strings.Split(rel, "/")
	for i := 1; i < len(parts); i++ {
		fi, err := x.root.Lstat(strings.Join(parts[:i], "/"))
		if err == nil && fi.Mode()&os.ModeSymlink != 0 {
			return true
		}
	}
	return false
}

// safeParent makes sure every directory between root and rel's parent is a
// real directory (creating missing ones), so nothing is written through a
// symbolic link.
func (x *extractor) safeParent(rel string) error {
	parts := strings.Split(rel, "/")
	for i := 1; i < len(parts); i++ {
		p := strings.Join(parts[:i], "/")
		if x.realDirs[p] {
			continue
		}
		fi, err := x.root.Lstat(p)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if err := x.root.Mkdir(p, 0o755); err != nil {
				return fmt.Errorf("extract: %w", err)
			}
		case err != nil:
			return fmt.Errorf("extract: %w", err)
		case fi.Mode()&os.ModeSymlink != 0:
			return fmt.Errorf("%w: %q goes through the symbolic link %q", ErrUnsafe, rel, p)
		case !fi.IsDir():
			return fmt.Errorf("extract: %q: %q is not a directory", rel, p)
		}
		x.realDirs[p] = true
	}
	return nil
}

// removeAll removes rel and forgets which directories were real: one of
// them may be replaced next.
func (x *extractor) removeAll(rel string) error {
	clear(x.realDirs)
	return x.root.RemoveAll(rel)
}

// charge counts n bytes of the archive against MaxBytes.
func (x *extractor) charge(n int64) error {
	x.written += n + entryOverhead
	if x.opts.MaxBytes > 0 && x.written > x.opts.MaxBytes {
		return fmt.Errorf("extract: %w: more than %d bytes", ErrTooLarge, x.opts.MaxBytes)
	}
	return nil
}

// ownerID maps an archive's uid or gid to the one the host tree keeps:
// a guest's (0..MaxID), or, unless the extraction runs in a tree's user
// namespace (ExtractAs), one of guest.TreeHostID's range as it stands: a
// tree ExtractAs made, moving between nodes.
func (x *extractor) ownerID(id int) int {
	switch {
	case id >= 0 && id <= MaxID:
		return id
	case !x.opts.inTreeNS && id >= guest.TreeHostID && id < guest.TreeHostID+guest.IDs:
		return id
	}
	return OverflowID
}

func (x *extractor) skip(name, why string) error {
	if x.opts.Skipped != nil {
		x.opts.Skipped(name, why)
	}
	return nil
}

func (x *extractor) entry(h *tar.Header, r io.Reader) error {
	rel, err := CleanName(h.Name)
	if err != nil {
		return err
	}
	size := int64(0)
	if h.Typeflag == tar.TypeReg || h.Typeflag == tar.TypeRegA {
		size = h.Size
	}
	if err := x.charge(size); err != nil {
		return err
	}
	if rel == "" {
		if h.Typeflag == tar.TypeDir && !x.opts.NoOwner {
			_ = x.root.Chmod(".", os.FileMode(h.Mode)&os.ModePerm|modeBits(h.Mode))
			_ = x.root.Lchown(".", x.ownerID(h.Uid), x.ownerID(h.Gid))
		}
		return nil
	}
	switch h.Typeflag {
	case tar.TypeChar, tar.TypeBlock:
		return x.skip(rel, "device node")
	case tar.TypeFifo:
		return x.skip(rel, "FIFO")
	}
	if err := x.safeParent(rel); err != nil {
		return err
	}
	base := path.Base(rel)
	dirRel := path.Dir(rel)
	if x.opts.Whiteouts && strings.HasPrefix(base, ".wh.") {
		if base == ".wh..wh..opq" {
			return x.opaque(dirRel)
		}
		victim := path.Join(dirRel, strings.TrimPrefix(base, ".wh."))
		if _, err := CleanName(victim); err != nil || victim == "." {
			return fmt.Errorf("%w: whiteout %q", ErrUnsafe, rel)
		}
		if err := x.removeAll(victim); err != nil {
			return fmt.Errorf("extract: whiteout %s: %w", rel, err)
		}
		return nil
	}
	x.layer[rel] = true
	// A later entry replaces an earlier one, except directory over directory.
	if fi, err := x.root.Lstat(rel); err == nil && !(fi.IsDir() && h.Typeflag == tar.TypeDir) {
		if err := x.removeAll(rel); err != nil {
			return fmt.Errorf("extract: replace %s: %w", rel, err)
		}
	}
	mode := os.FileMode(h.Mode) & os.ModePerm
	switch h.Typeflag {
	case tar.TypeDir:
		if err := x.root.Mkdir(rel, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("extract: %w", err)
		}
	case tar.TypeReg, tar.TypeRegA:
		f, err := x.root.OpenFile(rel, os.O_CREATE|os.O_EXCL|os.O_WRONLY|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			return fmt.Errorf("extract: %w", err)
		}
		_, err = io.Copy(f, io.LimitReader(r, h.Size))
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
		if err := x.root.Symlink(h.Linkname, rel); err != nil {
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
		if fi, err := x.root.Lstat(target); err == nil && !fi.Mode().IsRegular() && fi.Mode()&os.ModeSymlink == 0 {
			return fmt.Errorf("%w: hard link %q -> %q: not a file", ErrUnsafe, rel, h.Linkname)
		}
		if err := x.root.Link(target, rel); err != nil {
			return fmt.Errorf("extract: hard link %s: %w", rel, err)
		}
		return nil // the link shares the target's inode and metadata
	case tar.TypeXGlobalHeader:
		return nil
	default:
		return x.skip(rel, fmt.Sprintf("entry type %q", h.Typeflag))
	}
	if !x.opts.NoOwner {
		if err := x.root.Lchown(rel, x.ownerID(h.Uid), x.ownerID(h.Gid)); err != nil {
			return fmt.Errorf("extract: chown %s: %w", rel, err)
		}
	}
	if h.Typeflag != tar.TypeSymlink {
		// After chown, which clears setuid/setgid bits. rel is a real file
		// or directory here (created above, never through a link).
		if err := x.root.Chmod(rel, mode|modeBits(h.Mode)); err != nil {
			return fmt.Errorf("extract: chmod %s: %w", rel, err)
		}
		_ = x.root.Chtimes(rel, h.ModTime, h.ModTime)
	} else {
		x.symlinkTime(rel, h)
	}
	return nil
}

// symlinkTime sets a symbolic link's own modification time, through a
// descriptor of its parent directory (opened inside the root).
func (x *extractor) symlinkTime(rel string, h *tar.Header) {
	d, err := x.root.Open(path.Dir(rel))
	if err != nil {
		return
	}
	defer d.Close()
	ts := []unix.Timespec{unix.NsecToTimespec(h.ModTime.UnixNano()), unix.NsecToTimespec(h.ModTime.UnixNano())}
	_ = unix.UtimesNanoAt(int(d.Fd()), path.Base(rel), ts, unix.AT_SYMLINK_NOFOLLOW)
}

// opaque empties dirRel of what lower layers put there.
func (x *extractor) opaque(dirRel string) error {
	d, err := x.root.Open(dirRel)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("extract: opaque %s: %w", dirRel, err)
	}
	ents, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		return fmt.Errorf("extract: opaque %s: %w", dirRel, err)
	}
	for _, e := range ents {
		child := path.Join(dirRel, e.Name())
		if !x.layer[child] {
			if err := x.removeAll(child); err != nil {
				return fmt.Errorf("extract: opaque %s: %w", dirRel, err)
			}
		}
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
