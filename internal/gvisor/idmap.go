package gvisor

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cocoon-run/cocoon/internal/template/guest"
)

// DefaultHostID is the first host uid and gid of the sandboxes' id range:
// a sandbox's root is host uid 1879048192 (0x70000000), its uid 1000 is
// 1879049192, and so on for IDRange ids. No passwd entry has them (cocoon
// setup checks); see docs/decisions.md.
const DefaultHostID = 0x70000000

// IDRange is how many uids and gids each sandbox's user namespace maps.
const IDRange = 65536

// rootsBase is where the id-mapped views of template trees are mounted,
// one per container: outside the data dir, which other users (the
// sandbox's own host uid among them) cannot traverse.
const rootsBase = "/run/cocoon-gvisor"

// idmap makes, for each container, a read-only id-mapped view of its
// template tree in which the tree's host ids base..base+IDRange-1 appear as
// hostID..hostID+IDRange-1, so that the gofer and the sentry, root in a user
// namespace mapping 0 to hostID, see the files with their owners and can
// read them, without the tree being chowned or anything in it being
// writable by them. base is the tree's guest root (guest.TreeBase): 0 for
// the base template, guest.TreeHostID for trees unpacked from builds and
// images. With hostID 0 (sandboxes as root) only shifted trees need a view.
type idmap struct {
	hostID uint32
	dir    string // rootsBase/<hash of the state dir>

	mu     sync.Mutex
	userns map[uint32]*os.File // a user namespace per tree base; opened once
}

func newIDMap(hostID uint32, stateDir string) *idmap {
	h := sha256.Sum256([]byte(stateDir))
	return &idmap{hostID: hostID, dir: filepath.Join(rootsBase, hex.EncodeToString(h[:6])), userns: map[uint32]*os.File{}}
}

// path is where container id's view is mounted.
func (m *idmap) path(id string) string { return filepath.Join(m.dir, id) }

// usernsFile returns an fd of a user namespace mapping base..base+IDRange-1
// to hostID.., creating it the first time: a child process is started in a
// new user namespace with the mappings, stopped by ptrace before it runs
// anything, and its namespace opened before it is killed. (A Go process
// has threads and cannot unshare a user namespace itself.)
func (m *idmap) usernsFile(exe string, base uint32) (*os.File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if f := m.userns[base]; f != nil {
		return f, nil
	}
	ids := []syscall.SysProcIDMap{{ContainerID: int(base), HostID: int(m.hostID), Size: IDRange}}
	cmd := exec.Command(exe)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: ids, GidMappings: ids,
		Ptrace: true,
	}
	// The tracer is the thread that started the child (SysProcAttr.Ptrace).
	goruntime.LockOSThread()
	defer goruntime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start user namespace holder: %w", err)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/user", cmd.Process.Pid))
	cmd.Process.Kill()
	cmd.Wait()
	if err != nil {
		return nil, fmt.Errorf("open user namespace: %w", err)
	}
	m.userns[base] = f
	return f, nil
}

// mount mounts a read-only id-mapped view of rootfs for container id and
// returns its path (rootfs itself when the driver runs sandboxes as root
// and rootfs is owned by host root). Read-only also guards the template:
// removing the sandbox's files can never reach through the mount into it.
func (m *idmap) mount(exe, id, rootfs string) (string, error) {
	base, err := guest.TreeBase(rootfs)
	if err != nil {
		return "", err
	}
	if base == 0 && m.hostID == 0 {
		return rootfs, nil
	}
	userns, err := m.usernsFile(exe, base)
	if err != nil {
		return "", err
	}
	// The gofer (host gid hostID) must traverse to its root; other host
	// users may not (the template tree is theirs to see no more than the
	// data dir), and the sandboxes may not write there: root:hostID 0710.
	// The view is nosuid too: a setuid file of the template would run as
	// the sandboxes' uid.
	if err := os.Mkdir(rootsBase, 0o711); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("create %s: %w", rootsBase, err)
	}
	if err := os.Mkdir(m.dir, 0o710); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("create %s: %w", m.dir, err)
	}
	if err := os.Chown(m.dir, 0, int(m.hostID)); err != nil {
		return "", fmt.Errorf("chown %s: %w", m.dir, err)
	}
	if err := os.Chmod(m.dir, 0o710); err != nil {
		return "", fmt.Errorf("chmod %s: %w", m.dir, err)
	}
	target := m.path(id)
	m.unmount(id) // a leftover of a crash
	if err := os.Mkdir(target, 0o755); err != nil {
		return "", fmt.Errorf("create root mount point: %w", err)
	}
	tree, err := unix.OpenTree(unix.AT_FDCWD, rootfs, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		os.Remove(target)
		return "", fmt.Errorf("open_tree %s: %w", rootfs, err)
	}
	defer unix.Close(tree)
	attr := &unix.MountAttr{
		Attr_set:  unix.MOUNT_ATTR_IDMAP | unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV,
		Userns_fd: uint64(userns.Fd()),
	}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, attr); err != nil {
		os.Remove(target)
		return "", fmt.Errorf("id-map %s (needs a filesystem with idmapped mounts, or Config.AsRoot): %w", rootfs, err)
	}
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		os.Remove(target)
		return "", fmt.Errorf("mount %s: %w", target, err)
	}
	return target, nil
}

// unmount removes container id's view, if any.
func (m *idmap) unmount(id string) {
	target := m.path(id)
	unix.Unmount(target, unix.MNT_DETACH)
	os.Remove(target)
}
