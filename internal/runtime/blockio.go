package runtime

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// IOLimit caps a sandbox's block I/O on the disk that holds its files, in
// its cgroup (blkio.throttle.* on cgroup v1, io.max on v2). Zero fields are
// unlimited.
type IOLimit struct {
	ReadBps, WriteBps   uint64 // bytes per second
	ReadIOPS, WriteIOPS uint64 // operations per second
}

// DefaultIOLimit is every sandbox's I/O limit unless its driver is told
// otherwise: enough for a build or a pause (a 256 MiB snapshot in 1 s),
// far from what one guest needs to starve its neighbours on a node disk.
// No IOPS limit: a QEMU clone faults its RAM in from the template's memory
// file page by page, and 4000 IOPS made a guest writing 100 MiB of memory
// take over 30 s (TestDriver) when the file was not in the page cache.
var DefaultIOLimit = IOLimit{ReadBps: 256 << 20, WriteBps: 256 << 20}

// BlockDevice returns the major and minor numbers of the whole disk that
// holds path: cgroup I/O limits take disks, not partitions. It fails for
// files on filesystems without a block device (tmpfs, overlayfs).
func BlockDevice(path string) (major, minor uint32, err error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, 0, fmt.Errorf("stat %s: %w", path, err)
	}
	major, minor = unix.Major(st.Dev), unix.Minor(st.Dev)
	sys := fmt.Sprintf("/sys/dev/block/%d:%d", major, minor)
	if _, err := os.Stat(sys); err != nil {
		return 0, 0, fmt.Errorf("%s is on device %d:%d, not a block device", path, major, minor)
	}
	if _, err := os.Stat(filepath.Join(sys, "partition")); err == nil {
		// /sys/dev/block/M:m links to .../<disk>/<partition>.
		real, err := filepath.EvalSymlinks(sys)
		if err != nil {
			return 0, 0, fmt.Errorf("resolve %s: %w", sys, err)
		}
		b, err := os.ReadFile(filepath.Join(filepath.Dir(real), "dev"))
		if err != nil {
			return 0, 0, fmt.Errorf("disk of partition %d:%d: %w", major, minor, err)
		}
		ma, mi, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
		x, err1 := strconv.ParseUint(ma, 10, 32)
		y, err2 := strconv.ParseUint(mi, 10, 32)
		if !ok || errors.Join(err1, err2) != nil {
			return 0, 0, fmt.Errorf("disk of partition %d:%d: bad dev %q", major, minor, b)
		}
		return uint32(x), uint32(y), nil
	}
	return major, minor, nil
}
