package filesystem

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	fspb "github.com/cocoon-run/cocoon/api/gen/filesystem"
)

// MetadataXattrPrefix prefixes the extended attributes that hold the
// metadata given at upload (X-Metadata-<key> headers).
const MetadataXattrPrefix = "user.e2b."

// uploadTempMarker marks the temporary files /files uploads go through;
// watchers hide them, so clients see only the target file.
const uploadTempMarker = ".envd-upload-"

// UploadTempPattern is the os.CreateTemp pattern of an upload to a file
// named base.
func UploadTempPattern(base string) string {
	return "." + base + uploadTempMarker + "*"
}

func isUploadTemp(path string) bool {
	base := filepath.Base(path)
	return strings.HasPrefix(base, ".") && strings.Contains(base, uploadTempMarker)
}

// names caches uid/gid → name lookups for the duration of one request:
// without cgo, every lookup parses /etc/passwd or /etc/group.
type names struct {
	users  map[uint32]string
	groups map[uint32]string
}

func newNames() *names {
	return &names{users: map[uint32]string{}, groups: map[uint32]string{}}
}

func (n *names) user(uid uint32) string {
	if s, ok := n.users[uid]; ok {
		return s
	}
	s := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(s); err == nil {
		s = u.Username
	}
	n.users[uid] = s
	return s
}

func (n *names) group(gid uint32) string {
	if s, ok := n.groups[gid]; ok {
		return s
	}
	s := strconv.FormatUint(uint64(gid), 10)
	if g, err := user.LookupGroupId(s); err == nil {
		s = g.Name
	}
	n.groups[gid] = s
	return s
}

// Entry describes the file at path without following a final symlink.
func Entry(path string) (*fspb.EntryInfo, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	return entryFromInfo(path, fi, newNames()), nil
}

func entryFromInfo(path string, fi fs.FileInfo, n *names) *fspb.EntryInfo {
	e := &fspb.EntryInfo{
		Name:         fi.Name(),
		Path:         path,
		Size:         fi.Size(),
		Mode:         uint32(fi.Mode().Perm()),
		Permissions:  fi.Mode().String(),
		ModifiedTime: timestamppb.New(fi.ModTime()),
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.Mode = st.Mode & 0o7777
		e.Owner = n.user(st.Uid)
		e.Group = n.group(st.Gid)
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		e.Type = fspb.FileType_FILE_TYPE_SYMLINK
		if t, err := filepath.EvalSymlinks(path); err == nil {
			e.SymlinkTarget = &t
		} else if t, err := os.Readlink(path); err == nil {
			e.SymlinkTarget = &t
		}
	case fi.IsDir():
		e.Type = fspb.FileType_FILE_TYPE_DIRECTORY
	case fi.Mode().IsRegular():
		e.Type = fspb.FileType_FILE_TYPE_FILE
	}
	if md := Metadata(path); len(md) > 0 {
		e.Metadata = md
	}
	return e
}

// Metadata returns the user.e2b.* extended attributes of path, keyed
// without the prefix. Filesystems without xattr support yield nil.
func Metadata(path string) map[string]string {
	size, err := unix.Llistxattr(path, nil)
	if err != nil || size <= 0 {
		return nil
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(path, buf)
	if err != nil {
		return nil
	}
	var md map[string]string
	for name := range strings.SplitSeq(string(buf[:size]), "\x00") {
		key, ok := strings.CutPrefix(name, MetadataXattrPrefix)
		if !ok || key == "" {
			continue
		}
		val, err := getxattr(path, name)
		if err != nil {
			continue
		}
		if md == nil {
			md = map[string]string{}
		}
		md[key] = val
	}
	return md
}

func getxattr(path, name string) (string, error) {
	size, err := unix.Lgetxattr(path, name, nil)
	if err != nil {
		return "", err
	}
	buf := make([]byte, size)
	size, err = unix.Lgetxattr(path, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:size]), nil
}

// SetMetadata stores md as user.e2b.<key> extended attributes of the file
// open as f.
func SetMetadata(f *os.File, md map[string]string) error {
	for k, v := range md {
		if err := unix.Fsetxattr(int(f.Fd()), MetadataXattrPrefix+k, []byte(v), 0); err != nil {
			return fmt.Errorf("set metadata %q: %w", k, err)
		}
	}
	return nil
}

// MkdirAll creates path and any missing parents with mode 0755, giving
// every directory it creates to uid:gid. Directories that already exist are
// left alone.
func MkdirAll(path string, uid, gid int) error {
	path = filepath.Clean(path)
	fi, err := os.Stat(path)
	if err == nil {
		if !fi.IsDir() {
			return &fs.PathError{Op: "mkdir", Path: path, Err: syscall.ENOTDIR}
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if parent := filepath.Dir(path); parent != path {
		if err := MkdirAll(parent, uid, gid); err != nil {
			return err
		}
	}
	if err := os.Mkdir(path, 0o755); err != nil {
		// Lost a race with another creator: fine if it made a directory.
		if fi, serr := os.Stat(path); serr == nil && fi.IsDir() {
			return nil
		}
		return err
	}
	if err := os.Lchown(path, uid, gid); err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	return nil
}
