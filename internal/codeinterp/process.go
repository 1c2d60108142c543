package codeinterp

import (
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

// Close stops the kernel.
func (p *kernelProcess) Close() error {
	p.stop()
	return nil
}
