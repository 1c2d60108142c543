package envd

import (
	"encoding/binary"
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// System applies the machine-wide settings of /init. Clones of one snapshot
// share their clock, RNG state and hostname; /init makes each one unique.
type System interface {
	SetClock(t time.Time) error
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
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("set hostname: %w", err)
	}
	return nil
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
	// Without CAP_SYS_ADMIN (or under gVisor) at least mix the seed in,
	// uncredited.
	if _, err := f.Write(seed); err != nil {
		return fmt.Errorf("write /dev/urandom: %w", err)
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
