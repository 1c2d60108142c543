// Package reaper lets envd be a sandbox's PID 1. The kernel (and gVisor's
// sentry) hands every orphan to PID 1, which must reap it, as tini did;
// and kill(-1, sig) spares PID 1 and the caller, so a root user's
// `kill -9 -1` inside the sandbox kills every process but envd. Under tini
// as PID 1 it killed envd too, and the sandbox died with it.
//
// envd waits for the processes it starts itself (exec.Cmd.Wait): the
// reaper must never take their exit status. Start records such a child's
// pid while it forks, under the lock the reaper holds to reap, and the
// reaper reaps only zombies it does not know.
package reaper

import (
	"context"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reaper reaps the zombie children that envd did not start. Its methods
// do nothing on a nil Reaper (envd is not PID 1: whoever is reaps).
type Reaper struct {
	mu   sync.Mutex
	own  map[int]struct{} // started through Start, not yet Done
	kick chan struct{}
}

// New returns a Reaper; Run makes it reap.
func New() *Reaper {
	return &Reaper{own: make(map[int]struct{}), kick: make(chan struct{}, 1)}
}

// Start calls start, which starts one child and returns its pid, and
// leaves that child to the caller until Done: the reaper does not reap it
// even when it exits before Start returns.
func (r *Reaper) Start(start func() (int, error)) error {
	if r == nil {
		_, err := start()
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := start()
	if err == nil {
		r.own[pid] = struct{}{}
	}
	return err
}

// Done tells the reaper that pid, from Start, was waited for.
func (r *Reaper) Done(pid int) {
	if r == nil {
		return
	}
	r.mu.Lock()
	delete(r.own, pid)
	r.mu.Unlock()
	// An orphan that exited while pid was a zombie ahead of it is reaped now.
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run reaps orphans whenever a child exits, until ctx ends.
func (r *Reaper) Run(ctx context.Context) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGCHLD)
	defer signal.Stop(ch)
	for {
		r.Reap()
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-r.kick:
		}
	}
}

// Reap reaps the zombie children that are not envd's own, and returns how
// many. It stops at the first zombie that is envd's own (waitid without
// WNOWAIT cannot look past it): Done brings the reaper back once that one
// was waited for.
func (r *Reaper) Reap() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for {
		pid, err := peek()
		if err != nil || pid == 0 {
			return n
		}
		if _, ok := r.own[pid]; ok {
			return n
		}
		var ws unix.WaitStatus
		if got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); err != nil || got != pid {
			return n
		}
		n++
	}
}

// peek returns the pid of a zombie child without reaping it, 0 if there
// is none.
func peek() (int, error) {
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); err != nil {
		return 0, err
	}
	if info.Signo == 0 { // WNOHANG and no zombie
		return 0, nil
	}
	return int(siginfoPid(&info)), nil
}

// siginfoPid is si_pid, which unix.Siginfo keeps in its padding: it
// follows si_signo, si_errno and si_code, and on 64-bit Linux 4 bytes of
// alignment (the union after them holds pointers).
func siginfoPid(info *unix.Siginfo) int32 {
	off := uintptr(12)
	if unsafe.Sizeof(uintptr(0)) == 8 {
		off = 16
	}
	return *(*int32)(unsafe.Add(unsafe.Pointer(info), off))
}
