package envd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// System applies the machine-wide settings of /init. Clones of one snapshot
// share their clock, RNG state and hostname; /init makes each one unique.
type System interface {
	SetClock(t time.Time) error
	// SetHostname sets the hostname (empty name: keeps the current one)
	// and maps it to 127.0.1.1 in /etc/hosts, so tools that resolve their
	// own host (sudo) find it.
	SetHostname(name string) error
	// AddEntropy mixes seed into the kernel RNG and credits it.
	AddEntropy(seed []byte) error
}

// hostSystem changes the real machine; it needs root (CAP_SYS_TIME,
// CAP_SYS_ADMIN).
type hostSystem struct{}

func (hostSystem) SetClock(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("set clock: %w", err)
	}
	return nil
}

func (hostSystem) SetHostname(name string) error {
	if name == "" {
		var err error
		if name, err = os.Hostname(); err != nil {
			return fmt.Errorf("get hostname: %w", err)
		}
	} else if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("set hostname: %w", err)
	}
	old, err := os.ReadFile(hostsPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read hosts: %w", err)
	}
	if b := hostsWithName(old, name); !bytes.Equal(b, old) {
		// In place, not through a rename: /etc/hosts may be a bind mount.
		if err := os.WriteFile(hostsPath, b, 0o644); err != nil {
			return fmt.Errorf("write hosts: %w", err)
		}
	}
	return nil
}

const hostsPath = "/etc/hosts"

// hostsWithName returns the hosts file b with its 127.0.1.1 line naming
// only name (Debian's convention for the machine's own name), adding the
// line if there is none.
func hostsWithName(b []byte, name string) []byte {
	line := "127.0.1.1\t" + name
	var out []string
	found := false
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "127.0.1.1" {
			if found {
				continue
			}
			l, found = line, true
		}
		out = append(out, l)
	}
	if !found {
		out = append(out, line)
	}
	if len(out) > 0 && out[0] == "" {
		out = out[1:]
	}
	return []byte(strings.Join(out, "\n") + "\n")
}

func (hostSystem) AddEntropy(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open /dev/urandom: %w", err)
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	buf := make([]byte, 8+len(seed)+3)
	binary.NativeEndian.PutUint32(buf[0:], uint32(len(seed)*8))
	binary.NativeEndian.PutUint32(buf[4:], uint32(len(seed)))
	copy(buf[8:], seed)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0])))
	if errno == 0 {
		return nil
	}
	// Without CAP_SYS_ADMIN at least mix the seed in, uncredited.
	if _, err := f.Write(seed); err != nil {
		return fmt.Errorf("write /dev/urandom: %w", err)
	}
	if errno == unix.ENOTTY {
		// gVisor's /dev/urandom has no ioctls: the sentry draws every
		// read from the host's getrandom, so clones of one snapshot never
		// share RNG state and there is nothing to reseed.
		return nil
	}
	return fmt.Errorf("credit entropy: %w (seed mixed in uncredited)", errno)
}

// noSystem is used when envd is not root: nothing to change.
type noSystem struct{}

func (noSystem) SetClock(time.Time) error { return errNotRoot }
func (noSystem) SetHostname(string) error { return errNotRoot }
func (noSystem) AddEntropy(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open /dev/urandom: %w", err)
	}
	defer f.Close()
	if _, err := f.Write(seed); err != nil {
		return fmt.Errorf("write /dev/urandom: %w", err)
	}
	return nil
}
