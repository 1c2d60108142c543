package gvisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cocoon-run/cocoon/internal/runtime"
)

// instance is one running runsc sandbox.
type instance struct {
	d     *Driver
	id    string
	dir   string
	pid   int
	pidfd syscall.RawConn
	done  <-chan struct{}

	mu   sync.Mutex
	gone bool // paused or killed: the container no longer exists
}

var _ runtime.Instance = (*instance)(nil)

func (i *instance) PID() int              { return i.pid }
func (i *instance) Done() <-chan struct{} { return i.done }
func (i *instance) ConsoleLog() string    { return filepath.Join(i.dir, consoleLog) }
func (i *instance) String() string        { return "gvisor sandbox " + i.id }

// Pause checkpoints the sandbox (memory, processes and its in-memory
// overlay, so its files too) into dir/checkpoint, then deletes it and
// removes its directory.
//
// runsc checkpoint runs under a shell of its own that outlives an
// orchestrator crash: it records its pid in dir/checkpoint.pid and creates
// dir/checkpoint.done only once runsc has written the whole image, so that
// RecoverPause can tell a complete checkpoint from a torn one.
func (i *instance) Pause(ctx context.Context, dir string) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.gone {
		return fmt.Errorf("gvisor: pause %s: sandbox is gone", i.id)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("gvisor: create pause dir: %w", err)
	}
	// runsc checkpoint stops the sandbox once the image is written.
	if err := i.d.checkpoint(ctx, i.id, dir); err != nil {
		return fmt.Errorf("gvisor: pause %s: %w", i.id, err)
	}
	if err := writeMeta(dir, i.d); err != nil {
		return fmt.Errorf("gvisor: pause %s: %w", i.id, err)
	}
	return i.destroy(ctx)
}

// ExitReason implements runtime.ExitReasoner: a sandbox whose memory
// cgroup counted an OOM kill died of it.
func (i *instance) ExitReason() string {
	if cg := i.d.cgroupPath(i.id); cg != "" && runtime.OOMKills(cg) > 0 {
		return runtime.ReasonOOM
	}
	return ""
}

// Kill implements runtime.Instance.
func (i *instance) Kill(ctx context.Context) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.destroy(ctx)
}

// destroy deletes the container, waits for its sandbox process to exit
// and removes the sandbox directory. It is idempotent.
func (i *instance) destroy(ctx context.Context) error {
	var errs []error
	if !i.gone {
		// runsc delete --force kills the sandbox, and removes its cgroup
		// and state; it waits for neither the process nor its gofer.
		if err := i.d.remove(ctx, i.id); err != nil {
			errs = append(errs, err)
		}
		if !i.waitExit(ctx, 5*time.Second) {
			// Signal through the pidfd: immune to pid reuse.
			i.pidfd.Control(func(fd uintptr) {
				unix.PidfdSendSignal(int(fd), unix.SIGKILL, nil, 0)
			})
			if !i.waitExit(ctx, 5*time.Second) {
				errs = append(errs, fmt.Errorf("sandbox process %d did not exit", i.pid))
			}
		}
		if len(errs) == 0 {
			i.gone = true
		}
	}
	if err := os.RemoveAll(i.dir); err != nil {
		errs = append(errs, fmt.Errorf("remove sandbox dir: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("gvisor: kill %s: %w", i.id, err)
	}
	return nil
}

func (i *instance) waitExit(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-i.done:
		return true
	case <-ctx.Done():
		return false
	case <-t.C:
		return false
	}
}

// watchPID returns a pidfd for pid and a channel closed when pid exits. The
// sandbox is not our child (runsc --detach hands it to init), so it cannot
// be waited for; its pidfd, though, turns readable when it exits, and the
// runtime's poller can wait for that without a thread per sandbox.
func watchPID(pid int) (syscall.RawConn, <-chan struct{}, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("pidfd %d: %w", pid, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer f.Close()
		// The first call reports "not ready" so that Read waits for the
		// pidfd to become readable, which happens when pid exits.
		waited := false
		rc.Read(func(uintptr) bool {
			if waited {
				return true
			}
			waited = true
			return false
		})
		// runsc leaves the sandbox to init to reap, and runsc delete waits
		// until it is reaped. When that is us (we run as PID 1 or a child
		// subreaper), reap it here; otherwise this fails with ECHILD.
		rc.Control(func(fd uintptr) {
			unix.Waitid(unix.P_PIDFD, int(fd), nil, unix.WEXITED|unix.WNOHANG, nil)
		})
	}()
	return rc, done, nil
}
