// Package process implements envd's process.Process Connect service: it
// starts commands (optionally in a PTY) as the caller's Unix account, streams
// their output, and lets clients attach, send input and signals.
//
// A process outlives the stream that started it: when the stream's deadline
// passes or the client goes away only the stream ends, as in E2B (background
// commands, reconnect with Connect). A process leaves the table once it has
// ended and its end event has been published.
package process

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/creack/pty"

	pb "github.com/cocoon-run/cocoon/api/gen/process"
	"github.com/cocoon-run/cocoon/api/gen/process/processconnect"
	"github.com/cocoon-run/cocoon/internal/envd/frames"
	"github.com/cocoon-run/cocoon/internal/envd/identity"
	"github.com/cocoon-run/cocoon/internal/envd/reaper"
	"github.com/cocoon-run/cocoon/internal/envd/session"
)

// DefaultKeepalive is how often an output stream carries a keepalive event
// unless the client asks otherwise with the Keepalive-Ping-Interval header.
const DefaultKeepalive = 30 * time.Second

// KeepaliveHeader is the request header (seconds) the E2B SDK sends to
// choose the keepalive interval of a stream.
const KeepaliveHeader = "Keepalive-Ping-Interval"

// Option configures a Service.
type Option func(*Service)

// WithKeepalive sets the default keepalive interval of output streams.
func WithKeepalive(d time.Duration) Option {
	return func(s *Service) {
		if d > 0 {
			s.keepalive = d
		}
	}
}

// WithReaper has the processes started under r (envd is PID 1 and r
// reaps the orphans): r never takes their exit status.
func WithReaper(r *reaper.Reaper) Option {
	return func(s *Service) { s.reaper = r }
}

// Service implements processconnect.ProcessHandler.
type Service struct {
	sess      *session.Session
	keepalive time.Duration
	reaper    *reaper.Reaper // nil unless envd reaps orphans

	mu     sync.Mutex
	procs  map[uint32]*proc
	seq    uint64 // start order, to pick the newest process of a tag
	order  map[*proc]uint64
	closed bool
	wg     sync.WaitGroup // one per process until it is reaped
}

var _ processconnect.ProcessHandler = (*Service)(nil)

// New returns a process service whose processes get sess's environment
// variables and run as sess's default user unless a request names one.
func New(sess *session.Session, opts ...Option) *Service {
	if sess == nil {
		sess = &session.Session{}
	}
	s := &Service{
		sess:      sess,
		keepalive: DefaultKeepalive,
		procs:     make(map[uint32]*proc),
		order:     make(map[*proc]uint64),
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Handler returns the Connect handler of process.Process, mounted at the returned path.
func (s *Service) Handler(opts ...connect.HandlerOption) (string, http.Handler) {
	// Events are tens of bytes: gzip would cost more than it saves.
	opts = append([]connect.HandlerOption{connect.WithInterceptors(frames.Interceptor{}), connect.WithCompressMinBytes(frames.CompressMinBytes)}, opts...)
	path, h := processconnect.NewProcessHandler(s, opts...)
	return path, withTail(h)
}

// NewHandler returns the Connect handler of process.Process, mounted at the
// returned path. Use New, Service.Handler and Service.Close instead to kill
// the children at shutdown.
func NewHandler(sess *session.Session, opts ...connect.HandlerOption) (string, http.Handler) {
	return New(sess).Handler(opts...)
}

// Close refuses new processes, kills the process group of every running
// one and waits until they are reaped or ctx ends.
func (s *Service) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	procs := make([]*proc, 0, len(s.procs))
	for _, p := range s.procs {
		procs = append(procs, p)
	}
	s.mu.Unlock()
	for _, p := range procs {
		_ = p.signal(syscall.SIGKILL)
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for processes: %w", ctx.Err())
	}
}

// Start runs a process and streams its events: start, data…, end.
func (s *Service) Start(ctx context.Context, req *connect.Request[pb.StartRequest], stream *connect.ServerStream[pb.StartResponse]) error {
	msg := req.Msg
	if msg.GetProcess().GetCmd() == "" {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("process.cmd is required"))
	}
	u, err := identity.Resolve(req.Header(), "", s.sess.DefaultUser())
	if err != nil {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("resolve user: %w", err))
	}
	p, sub, err := s.spawn(msg, u)
	if err != nil {
		return err
	}
	defer p.leave(sub)
	return s.pump(ctx, req.Header(), p, sub, func(ev *pb.ProcessEvent) error {
		return stream.Send(&pb.StartResponse{Event: ev})
	})
}

// Connect attaches to a running process: start{pid}, then the events from now on.
func (s *Service) Connect(ctx context.Context, req *connect.Request[pb.ConnectRequest], stream *connect.ServerStream[pb.ConnectResponse]) error {
	p, err := s.find(req.Msg.GetProcess())
	if err != nil {
		return err
	}
	sub := p.subscribe(false)
	defer p.leave(sub)
	return s.pump(ctx, req.Header(), p, sub, func(ev *pb.ProcessEvent) error {
		return stream.Send(&pb.ConnectResponse{Event: ev})
	})
}

// List returns the running processes, ordered by pid.
func (s *Service) List(_ context.Context, _ *connect.Request[pb.ListRequest]) (*connect.Response[pb.ListResponse], error) {
	s.mu.Lock()
	infos := make([]*pb.ProcessInfo, 0, len(s.procs))
	for _, p := range s.procs {
		info := &pb.ProcessInfo{Config: p.cfg, Pid: p.pid}
		if p.tag != "" {
			info.Tag = &p.tag
		}
		infos = append(infos, info)
	}
	s.mu.Unlock()
	slices.SortFunc(infos, func(a, b *pb.ProcessInfo) int { return int(a.Pid) - int(b.Pid) })
	return connect.NewResponse(&pb.ListResponse{Processes: infos}), nil
}

// SendInput writes bytes to the process's stdin (or PTY).
func (s *Service) SendInput(ctx context.Context, req *connect.Request[pb.SendInputRequest]) (*connect.Response[pb.SendInputResponse], error) {
	p, err := s.find(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := writeInput(ctx, p, req.Msg.GetInput()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.SendInputResponse{}), nil
}

// StreamInput writes a client stream of input to one process; the first
// message selects it.
func (s *Service) StreamInput(ctx context.Context, stream *connect.ClientStream[pb.StreamInputRequest]) (*connect.Response[pb.StreamInputResponse], error) {
	if !stream.Receive() {
		if err := stream.Err(); err != nil {
			return nil, err
		}
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("empty input stream"))
	}
	start := stream.Msg().GetStart()
	if start == nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("first message must be start"))
	}
	p, err := s.find(start.GetProcess())
	if err != nil {
		return nil, err
	}
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().(type) {
		case *pb.StreamInputRequest_Data:
			if err := writeInput(ctx, p, ev.Data.GetInput()); err != nil {
				return nil, err
			}
		case *pb.StreamInputRequest_Keepalive:
		default:
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("expected data or keepalive"))
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.StreamInputResponse{}), nil
}

// SendSignal signals the process group.
func (s *Service) SendSignal(_ context.Context, req *connect.Request[pb.SendSignalRequest]) (*connect.Response[pb.SendSignalResponse], error) {
	var sig syscall.Signal
	switch req.Msg.GetSignal() {
	case pb.Signal_SIGNAL_SIGKILL:
		sig = syscall.SIGKILL
	case pb.Signal_SIGNAL_SIGTERM:
		sig = syscall.SIGTERM
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("unsupported signal %v", req.Msg.GetSignal()))
	}
	p, err := s.find(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := p.signal(sig); err != nil {
		if errors.Is(err, errEnded) || errors.Is(err, syscall.ESRCH) {
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("process %d: %w", p.pid, errEnded))
		}
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("signal process %d: %w", p.pid, err))
	}
	return connect.NewResponse(&pb.SendSignalResponse{}), nil
}

// CloseStdin signals EOF on the process's stdin.
func (s *Service) CloseStdin(_ context.Context, req *connect.Request[pb.CloseStdinRequest]) (*connect.Response[pb.CloseStdinResponse], error) {
	p, err := s.find(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := p.closeStdin(); err != nil {
		return nil, inputError(p, err)
	}
	return connect.NewResponse(&pb.CloseStdinResponse{}), nil
}

// Update resizes the process's PTY.
func (s *Service) Update(_ context.Context, req *connect.Request[pb.UpdateRequest]) (*connect.Response[pb.UpdateResponse], error) {
	size := req.Msg.GetPty().GetSize()
	if size == nil || size.GetCols() == 0 || size.GetRows() == 0 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("pty.size with cols and rows is required"))
	}
	p, err := s.find(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := p.resize(size.GetCols(), size.GetRows()); err != nil {
		if errors.Is(err, errNoPTY) {
			return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d: %w", p.pid, err))
		}
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("resize pty of %d: %w", p.pid, err))
	}
	return connect.NewResponse(&pb.UpdateResponse{}), nil
}

// pump sends the events of sub until the process ended (then the end event),
// the subscriber was dropped, or the stream's context ended. It sends the
// start event first.
func (s *Service) pump(ctx context.Context, h http.Header, p *proc, sub *subscriber, send func(*pb.ProcessEvent) error) error {
	if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: p.pid}}}); err != nil {
		return err
	}
	tick := time.NewTicker(s.keepaliveFor(h))
	defer tick.Stop()
	for {
		select {
		case ev := <-sub.ch:
			if err := send(ev); err != nil {
				return err
			}
		case <-p.ended:
			// Everything published before the end is already queued, and
			// nothing is published after it: the rest of the stream can go
			// out in one write.
			holdTail(ctx)
			for len(sub.ch) > 0 {
				if err := send(<-sub.ch); err != nil {
					return err
				}
			}
			return send(p.end)
		case <-sub.kicked:
			return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("process %d: %w", p.pid, errSlow))
		case <-tick.C:
			if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Keepalive{Keepalive: &pb.ProcessEvent_KeepAlive{}}}); err != nil {
				return err
			}
		case <-ctx.Done():
			// Only the stream ends; the process keeps running.
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return connect.NewError(connect.CodeDeadlineExceeded, errors.New("stream deadline exceeded; the process keeps running"))
			}
			return connect.NewError(connect.CodeCanceled, ctx.Err())
		}
	}
}

func (s *Service) keepaliveFor(h http.Header) time.Duration {
	if v := h.Get(KeepaliveHeader); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			return time.Duration(n) * time.Second
		}
	}
	return s.keepalive
}

// find resolves a selector to a running process.
func (s *Service) find(sel *pb.ProcessSelector) (*proc, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch v := sel.GetSelector().(type) {
	case *pb.ProcessSelector_Pid:
		if p, ok := s.procs[v.Pid]; ok {
			return p, nil
		}
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("process with pid %d not found", v.Pid))
	case *pb.ProcessSelector_Tag:
		var best *proc
		for _, p := range s.procs {
			if p.tag == v.Tag && (best == nil || s.order[p] > s.order[best]) {
				best = p
			}
		}
		if best == nil {
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("process with tag %q not found", v.Tag))
		}
		return best, nil
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("process selector (pid or tag) is required"))
	}
}

func writeInput(ctx context.Context, p *proc, in *pb.ProcessInput) error {
	var b []byte
	switch v := in.GetInput().(type) {
	case *pb.ProcessInput_Stdin:
		b = v.Stdin
	case *pb.ProcessInput_Pty:
		b = v.Pty
	default:
		return connect.NewError(connect.CodeInvalidArgument, errors.New("input (stdin or pty) is required"))
	}
	if err := p.write(ctx, b); err != nil {
		return inputError(p, err)
	}
	return nil
}

func inputError(p *proc, err error) error {
	code := connect.CodeInternal
	switch {
	case errors.Is(err, errNoStdin), errors.Is(err, errStdinClosed):
		code = connect.CodeFailedPrecondition
	case errors.Is(err, context.DeadlineExceeded):
		code = connect.CodeDeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = connect.CodeCanceled
	}
	return connect.NewError(code, fmt.Errorf("input of process %d: %w", p.pid, err))
}

// spawn starts the process of msg as u, registers it and subscribes the
// starting stream (a blocking subscriber: output is never dropped for it).
func (s *Service) spawn(msg *pb.StartRequest, u *identity.User) (*proc, *subscriber, error) {
	cfg := msg.GetProcess()
	dir := cfg.GetCwd()
	if dir == "" {
		dir = s.sess.DefaultWorkdir()
	}
	cwd := u.Abs(dir)
	env := buildEnv(u, cwd, s.sess.Envs(), cfg.GetEnvs())
	path, err := lookPath(cfg.GetCmd(), env)
	if err != nil {
		return nil, nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("start %q: %w", cfg.GetCmd(), err))
	}
	cred, err := credential(u)
	if err != nil {
		return nil, nil, connect.NewError(connect.CodePermissionDenied, err)
	}
	cmd := &exec.Cmd{
		Path:        path,
		Args:        append([]string{cfg.GetCmd()}, cfg.GetArgs()...),
		Env:         env,
		Dir:         cwd,
		SysProcAttr: &syscall.SysProcAttr{Credential: cred},
	}

	s.mu.Lock()
	closed := s.closed
	if !closed {
		s.wg.Add(1)
	}
	s.mu.Unlock()
	if closed {
		return nil, nil, connect.NewError(connect.CodeUnavailable, errors.New("envd is shutting down"))
	}

	p := &proc{
		tag:   msg.GetTag(),
		cfg:   cfg,
		cmd:   cmd,
		subs:  make(map[*subscriber]struct{}),
		ended: make(chan struct{}),
	}
	var readers sync.WaitGroup
	err = s.reaper.Start(func() (int, error) {
		var err error
		if msg.Pty != nil {
			err = startPTY(p, msg.GetPty().GetSize())
		} else {
			err = startPipes(p, msg.GetStdin())
		}
		if err != nil {
			return 0, err
		}
		return cmd.Process.Pid, nil
	})
	if err != nil {
		s.wg.Done()
		return nil, nil, startError(cfg.GetCmd(), err)
	}
	p.pid = uint32(cmd.Process.Pid)
	sub := p.subscribe(true)

	s.mu.Lock()
	s.seq++
	s.procs[p.pid] = p
	s.order[p] = s.seq
	closing := s.closed // Close ran while the process started
	s.mu.Unlock()
	if closing {
		_ = p.signal(syscall.SIGKILL)
	}

	if p.tty != nil {
		readers.Add(1)
		go func() { defer readers.Done(); p.readOutput(p.tty, ptyData) }()
	} else {
		readers.Add(2)
		go func() { defer readers.Done(); p.readOutput(p.outs[0], stdoutData) }()
		go func() { defer readers.Done(); p.readOutput(p.outs[1], stderrData) }()
	}
	go p.wait(&readers, func() {
		s.reaper.Done(int(p.pid))
		s.mu.Lock()
		if s.procs[p.pid] == p { // the pid may already be reused
			delete(s.procs, p.pid)
		}
		delete(s.order, p)
		s.mu.Unlock()
		s.wg.Done()
	})
	return p, sub, nil
}

func startPTY(p *proc, size *pb.PTY_Size) error {
	ws := &pty.Winsize{Cols: 80, Rows: 24}
	if size.GetCols() > 0 && size.GetRows() > 0 {
		ws = &pty.Winsize{Cols: uint16(size.GetCols()), Rows: uint16(size.GetRows())}
	}
	attrs := p.cmd.SysProcAttr
	attrs.Setsid = true // also a new process group, for SendSignal
	attrs.Setctty = true
	master, err := pty.StartWithAttrs(p.cmd, ws, attrs)
	if err != nil {
		return err
	}
	if master, err = pollable(master); err != nil {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
		return err
	}
	p.tty = master
	p.stdin = master
	p.outs = []*os.File{master}
	return nil
}

func startPipes(p *proc, stdin bool) (err error) {
	p.cmd.SysProcAttr.Setpgid = true
	var files []*os.File // parent's copies of the child's ends
	var ours []*os.File
	defer func() {
		for _, f := range files {
			_ = f.Close()
		}
		if err != nil {
			for _, f := range ours {
				_ = f.Close()
			}
		}
	}()
	pipe := func() (r, w *os.File, err error) {
		r, w, err = os.Pipe()
		if err != nil {
			return nil, nil, fmt.Errorf("create pipe: %w", err)
		}
		return r, w, nil
	}
	outR, outW, err := pipe()
	if err != nil {
		return err
	}
	ours, files = append(ours, outR), append(files, outW)
	errR, errW, err := pipe()
	if err != nil {
		return err
	}
	ours, files = append(ours, errR), append(files, errW)
	p.cmd.Stdout, p.cmd.Stderr = outW, errW
	// Without stdin the child reads /dev/null: EOF at once, as in E2B.
	// One shared descriptor saves an open and a close per process.
	if null, err := devNull(); err == nil && !stdin {
		p.cmd.Stdin = null
	}
	if stdin {
		inR, inW, err := pipe()
		if err != nil {
			return err
		}
		ours, files = append(ours, inW), append(files, inR)
		p.cmd.Stdin = inR
		p.stdin = inW
	}
	if err := p.cmd.Start(); err != nil {
		return err
	}
	p.outs = []*os.File{outR, errR}
	return nil
}

// devNull is /dev/null opened once for reading, the stdin of every process
// started without one; exec.Cmd would open and close it for each. Should it
// fail, exec.Cmd's own open reports the error.
var devNull = sync.OnceValues(func() (*os.File, error) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", os.DevNull, err)
	}
	return f, nil
})

// startError maps a failed exec to a Connect code: the E2B SDK surfaces it
// as an error of commands.run / pty.create (no start event is sent).
func startError(cmd string, err error) error {
	code := connect.CodeInternal
	switch {
	case errors.Is(err, fs.ErrPermission):
		code = connect.CodePermissionDenied
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, exec.ErrNotFound),
		errors.Is(err, syscall.ENOEXEC), errors.Is(err, syscall.ENOTDIR):
		code = connect.CodeInvalidArgument
	}
	return connect.NewError(code, fmt.Errorf("start %q: %w", cmd, err))
}

func stdoutData(b []byte) *pb.ProcessEvent_DataEvent {
	return &pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stdout{Stdout: b}}
}

func stderrData(b []byte) *pb.ProcessEvent_DataEvent {
	return &pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stderr{Stderr: b}}
}

func ptyData(b []byte) *pb.ProcessEvent_DataEvent {
	return &pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Pty{Pty: b}}
}
