package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	pb "github.com/cocoon-run/cocoon/api/gen/process"
)

const (
	// readChunk bounds one data event: output is forwarded as it arrives,
	// at most this many bytes at a time.
	readChunk = 32 << 10
	// subQueue is the number of events a non-blocking subscriber may lag
	// behind before it is disconnected (at most subQueue*readChunk bytes).
	subQueue = 256
	// drainGrace is how long output readers may keep going after the
	// process exited, for output still in flight. A grandchild that keeps
	// the pipe open (`cmd &`) must not hold the end event forever.
	drainGrace = 50 * time.Millisecond
)

// readBufs recycles the read buffers of output readers. Every process has
// two, most commands print little or nothing, and allocating 64 KiB per
// process for that made the garbage collector a visible share of a short
// command's round trip. Events carry copies, never these buffers.
var readBufs = sync.Pool{New: func() any {
	b := make([]byte, readChunk)
	return &b
}}

// errSlow ends the stream of a subscriber that fell too far behind.
var errSlow = errors.New("subscriber too slow: output dropped")

// subscriber receives the events of one output stream.
type subscriber struct {
	ch chan *pb.ProcessEvent
	// blocking subscribers apply backpressure to the process's output
	// instead of being dropped, until they leave.
	blocking bool
	gone     chan struct{} // closed by leave
	once     sync.Once
	// kicked is closed when a non-blocking subscriber overflowed.
	kicked chan struct{}
}

// proc is one running process and its subscribers.
type proc struct {
	pid  uint32
	tag  string
	cfg  *pb.ProcessConfig
	cmd  *exec.Cmd
	tty  *os.File // PTY master; nil without a PTY
	outs []*os.File

	inMu    sync.Mutex
	stdin   *os.File // nil when the process has no stdin
	inEnded bool

	mu   sync.Mutex
	subs map[*subscriber]struct{}
	end  *pb.ProcessEvent // set before ended is closed

	ended chan struct{} // closed once the end event is known
}

// subscribe registers a subscriber; events published after it returns reach it.
// The caller must call leave when its stream ends.
func (p *proc) subscribe(blocking bool) *subscriber {
	s := &subscriber{
		ch:       make(chan *pb.ProcessEvent, subQueue),
		blocking: blocking,
		gone:     make(chan struct{}),
		kicked:   make(chan struct{}),
	}
	p.mu.Lock()
	if p.subs != nil { // nil once ended: the stream just gets the end event
		p.subs[s] = struct{}{}
	}
	p.mu.Unlock()
	return s
}

// leave unregisters s and releases a publisher waiting on it.
func (p *proc) leave(s *subscriber) {
	p.mu.Lock()
	delete(p.subs, s)
	p.mu.Unlock()
	s.once.Do(func() { close(s.gone) })
}

// publish fans ev out. Non-blocking subscribers that are full are
// disconnected; blocking ones are waited for until their stream ends.
func (p *proc) publish(ev *pb.ProcessEvent) {
	p.mu.Lock()
	var slow []*subscriber
	for s := range p.subs {
		select {
		case s.ch <- ev:
		default:
			if s.blocking {
				slow = append(slow, s)
				continue
			}
			delete(p.subs, s)
			close(s.kicked)
		}
	}
	p.mu.Unlock()
	// Wait without the lock so that other subscribers can come and go.
	for _, s := range slow {
		select {
		case s.ch <- ev:
		case <-s.gone:
		}
	}
}

// readOutput forwards f's bytes as data events until EOF or, once the
// process has exited, until the read deadline set by wait.
func (p *proc) readOutput(f *os.File, wrap func([]byte) *pb.ProcessEvent_DataEvent) {
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	buf := *bp
	emit := func(b []byte) {
		out := make([]byte, len(b))
		copy(out, b)
		p.publish(&pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: wrap(out)}})
	}
	for {
		n, err := f.Read(buf)
		if n > 0 {
			emit(buf[:n])
		}
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// Take what is already buffered without waiting for writers
			// that outlived the process.
			_ = f.SetReadDeadline(time.Time{})
			drainNow(f, buf, emit)
		}
		// EOF, EIO (PTY slave closed) or deadline: the output is over.
		return
	}
}

// drainNow reads what f holds right now, without blocking.
func drainNow(f *os.File, buf []byte, emit func([]byte)) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	for {
		var n int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			n, rerr = syscall.Read(int(fd), buf)
			return true // one attempt: never wait
		}); err != nil || rerr != nil || n <= 0 {
			return
		}
		emit(buf[:n])
	}
}

// wait reaps the process once its output is read, publishes the end event
// and calls release. It runs in its own goroutine.
func (p *proc) wait(readers *sync.WaitGroup, release func()) {
	readDone := make(chan struct{})
	go func() { readers.Wait(); close(readDone) }()

	err := p.cmd.Wait()
	select {
	case <-readDone:
	case <-time.After(drainGrace):
		for _, f := range p.outs {
			_ = f.SetReadDeadline(time.Now())
		}
		<-readDone
	}
	for _, f := range p.outs {
		_ = f.Close()
	}
	p.inMu.Lock()
	p.inEnded = true
	if p.stdin != nil && p.tty == nil {
		_ = p.stdin.Close()
	}
	p.inMu.Unlock()

	end := endEvent(p.cmd.ProcessState, err)
	p.mu.Lock()
	p.end = &pb.ProcessEvent{Event: &pb.ProcessEvent_End{End: end}}
	close(p.ended)
	p.subs = nil
	p.mu.Unlock()
	release()
}

// endEvent describes how the process ended, as E2B's envd does:
// a SIGKILL gives {exitCode:-1, exited:false, status and error "signal: killed"}.
func endEvent(st *os.ProcessState, waitErr error) *pb.ProcessEvent_EndEvent {
	end := &pb.ProcessEvent_EndEvent{ExitCode: -1}
	if st != nil {
		end.ExitCode = int32(st.ExitCode())
		end.Exited = st.Exited()
		end.Status = st.String()
	}
	if waitErr != nil {
		msg := waitErr.Error()
		end.Error = &msg
		if end.Status == "" {
			end.Status = msg
		}
	}
	return end
}

// write sends input to the process's stdin or PTY. It gives up when ctx
// ends: a process that does not read must not pin the request forever.
func (p *proc) write(ctx context.Context, b []byte) error {
	p.inMu.Lock()
	defer p.inMu.Unlock()
	if p.stdin == nil {
		return errNoStdin
	}
	if p.inEnded {
		return errStdinClosed
	}
	_ = p.stdin.SetWriteDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { _ = p.stdin.SetWriteDeadline(time.Now()) })
	defer stop()
	_, err := p.stdin.Write(b)
	switch {
	case errors.Is(err, syscall.EPIPE):
		return errStdinClosed // the process closed its end
	case errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() != nil:
		return fmt.Errorf("write stdin: %w", ctx.Err())
	}
	return err
}

// closeStdin signals EOF. With a PTY it sends the terminal's EOF (^D).
func (p *proc) closeStdin() error {
	p.inMu.Lock()
	defer p.inMu.Unlock()
	if p.stdin == nil {
		return errNoStdin
	}
	if p.inEnded {
		return nil
	}
	if p.tty != nil {
		_, err := p.tty.Write([]byte{4})
		return err
	}
	p.inEnded = true
	return p.stdin.Close()
}

// signal sends sig to the process group, so children die with it.
func (p *proc) signal(sig syscall.Signal) error {
	select {
	case <-p.ended:
		return errEnded
	default:
	}
	err := syscall.Kill(-int(p.pid), sig)
	if errors.Is(err, syscall.ESRCH) {
		// Not a group leader (should not happen); try the process alone.
		err = syscall.Kill(int(p.pid), sig)
	}
	return err
}

func (p *proc) resize(cols, rows uint32) error {
	if p.tty == nil {
		return errNoPTY
	}
	// Through SyscallConn, not pty.Setsize: that calls Fd, which puts the
	// master back in blocking mode (see pollable).
	rc, err := p.tty.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Col: uint16(cols), Row: uint16(rows)})
	}); err != nil {
		return err
	}
	return ierr
}

// pollable returns f's descriptor as a file the runtime poller serves, and
// closes f. creack/pty hands the PTY master over in blocking mode (it calls
// Fd), where a read ignores its deadline: the end of a command whose
// background child keeps the terminal open (`sleep 5 & echo hi`) then
// waited for that child, whenever the child did not die of SIGHUP with its
// shell (under nohup, 5 s instead of drainGrace).
func pollable(f *os.File) (*os.File, error) {
	defer f.Close()
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup pty master: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pty master non-blocking: %w", err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

var (
	errNoStdin     = errors.New("process was started without stdin")
	errStdinClosed = errors.New("stdin is closed")
	errEnded       = errors.New("process has ended")
	errNoPTY       = errors.New("process has no pty")
)
