package codeinterp

import (
	"errors"
	"os/exec"
	"sync"
	"syscall"
)

// kernelProcess is what every kernel keeps of its process across
// restarts: the process, the channel closed when it has exited, and how
// many times it was started. A kernel embeds it and sets the fields under
// life in its start.
type kernelProcess struct {
	life sync.Mutex // guards the fields below, and the kernel's own per-start fields
	proc *exec.Cmd
	dead chan struct{} // closed once proc has exited and was waited for
	gen  int           // starts so far
	// closed is set by Close: a start that races it (a restart after an
	// interrupt runs on its own) kills what it started instead of
	// leaving a kernel no one will stop.
	closed bool
}

// errKernelClosed is what a start that raced Close returns.
var errKernelClosed = errors.New("the kernel was closed")

// setLocked records a started process; the caller holds life. After Close
// it kills the process and returns errKernelClosed.
func (p *kernelProcess) setLocked(cmd *exec.Cmd, dead chan struct{}) error {
	if p.closed {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		return errKernelClosed
	}
	p.proc, p.dead = cmd, dead
	p.gen++
	return nil
}

// stop kills the kernel's process group and waits for its end.
func (p *kernelProcess) stop() {
	p.life.Lock()
	proc, dead := p.proc, p.dead
	p.life.Unlock()
	if proc == nil {
		return
	}
	_ = syscall.Kill(-proc.Process.Pid, syscall.SIGKILL)
	<-dead
}

// Generation counts the kernel's starts.
func (p *kernelProcess) Generation() int {
	p.life.Lock()
	defer p.life.Unlock()
	return p.gen
}

// Close stops the kernel; a start under way when it is called stops too.
func (p *kernelProcess) Close() error {
	p.life.Lock()
	p.closed = true
	p.life.Unlock()
	p.stop()
	return nil
}
