package cocoon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// Commands runs processes in a sandbox (Sandbox.Commands).
type Commands struct{ s *Sandbox }

// RunOptions are the options of Commands.Run and Commands.Start.
type RunOptions struct {
	// Envs are added to the sandbox's environment.
	Envs map[string]string
	// Cwd is the working directory (default: the user's home).
	Cwd string
	// User runs the command as this user (default: the sandbox's default
	// user).
	User string
	// Tag names the process in List; Connect and Kill can use it.
	Tag string
	// Stdin keeps the command's standard input open for SendStdin (it is
	// closed otherwise: a command reading it sees end of file).
	Stdin bool
	// OnStdout and OnStderr receive output as it comes, in order, from one
	// goroutine. The slices are the callback's to keep.
	OnStdout, OnStderr func([]byte)
	// Timeout kills the command after this long (Run returns a
	// TimeoutError); 0: no limit but ctx's.
	Timeout time.Duration
}

// CommandResult is how a command ended.
type CommandResult struct {
	// Stdout and Stderr are all the command wrote.
	Stdout, Stderr string
	// ExitCode is the exit code; -1 when a signal killed it.
	ExitCode int
	// Error is envd's word on an abnormal end ("signal: killed").
	Error string
}

// ProcessInfo describes a running process (Commands.List).
type ProcessInfo struct {
	PID  uint32            `json:"pid"`
	Tag  string            `json:"tag,omitempty"`
	Cmd  string            `json:"cmd"`
	Args []string          `json:"args,omitempty"`
	Envs map[string]string `json:"envs,omitempty"`
	Cwd  string            `json:"cwd,omitempty"`
}

// The JSON of envd's process service (proto3 canonical JSON).
type (
	processConfig struct {
		Cmd  string            `json:"cmd"`
		Args []string          `json:"args,omitempty"`
		Envs map[string]string `json:"envs,omitempty"`
		Cwd  *string           `json:"cwd,omitempty"`
	}
	ptySize struct {
		Cols uint32 `json:"cols"`
		Rows uint32 `json:"rows"`
	}
	ptyConfig struct {
		Size ptySize `json:"size"`
	}
	startRequest struct {
		Process processConfig `json:"process"`
		PTY     *ptyConfig    `json:"pty,omitempty"`
		Tag     *string       `json:"tag,omitempty"`
		Stdin   *bool         `json:"stdin,omitempty"`
	}
	selector struct {
		PID uint32 `json:"pid,omitempty"`
		Tag string `json:"tag,omitempty"`
	}
	processEvent struct {
		Event struct {
			Start *struct {
				PID uint32 `json:"pid"`
			} `json:"start"`
			Data *struct {
				Stdout []byte `json:"stdout"`
				Stderr []byte `json:"stderr"`
				PTY    []byte `json:"pty"`
			} `json:"data"`
			End *struct {
				ExitCode int    `json:"exitCode"`
				Exited   bool   `json:"exited"`
				Status   string `json:"status"`
				Error    string `json:"error"`
			} `json:"end"`
		} `json:"event"`
	}
)

// CommandHandle is a started command (or a PTY): wait for it, feed it, kill
// it. Its output is delivered to the callbacks given when it was started.
type CommandHandle struct {
	// PID is the process's ID in the sandbox.
	PID uint32

	s      *Sandbox
	st     *stream
	cancel context.CancelFunc
	done   chan struct{}

	onStdout, onStderr, onPTY func([]byte)

	mu             sync.Mutex
	stdout, stderr bytes.Buffer
	result         *CommandResult
	err            error
}

// Run runs cmd with bash (`/bin/bash -l -c cmd`, as the official SDKs do)
// and waits for it. A non-zero exit returns the result and a
// *CommandExitError. When ctx ends first the command is killed.
func (c *Commands) Run(ctx context.Context, cmd string, opts *RunOptions) (*CommandResult, error) {
	if opts == nil {
		opts = &RunOptions{}
	}
	h, err := c.Start(ctx, cmd, opts)
	if err != nil {
		return nil, err
	}
	wctx := ctx
	if opts.Timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, opts.Timeout)
		defer cancel()
	}
	res, err := h.Wait(wctx)
	if err != nil && wctx.Err() != nil && h.running() {
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		// Killed and gone when Run returns: wait for the end event.
		if h.Kill(kctx) == nil {
			select {
			case <-h.done:
			case <-kctx.Done():
			}
		}
		h.Disconnect()
		if ctx.Err() == nil { // our Timeout, not the caller's context
			return nil, &TimeoutError{APIError{Message: fmt.Sprintf("command %q ran longer than %v and was killed", cmd, opts.Timeout)}}
		}
		return nil, err
	}
	return res, err
}

// Start starts cmd with bash and returns as soon as it runs; the handle's
// Wait returns its result. ctx bounds the start only: the command and its
// output stream last until it ends, Kill or Disconnect.
func (c *Commands) Start(ctx context.Context, cmd string, opts *RunOptions) (*CommandHandle, error) {
	if opts == nil {
		opts = &RunOptions{}
	}
	req := startRequest{Process: processConfig{Cmd: "/bin/bash", Args: []string{"-l", "-c", cmd}, Envs: opts.Envs}}
	if opts.Cwd != "" {
		req.Process.Cwd = &opts.Cwd
	}
	if opts.Tag != "" {
		req.Tag = &opts.Tag
	}
	if opts.Stdin {
		req.Stdin = &opts.Stdin
	}
	h := &CommandHandle{s: c.s, onStdout: opts.OnStdout, onStderr: opts.OnStderr}
	if err := h.open(ctx, "process.Process/Start", opts.User, req); err != nil {
		return nil, fmt.Errorf("start %q in sandbox %s: %w", cmd, c.s.ID, err)
	}
	return h, nil
}

// ConnectOptions are the options of Commands.Connect.
type ConnectOptions struct {
	OnStdout, OnStderr func([]byte)
}

// Connect attaches to the running process pid: its output from now on goes
// to the callbacks, and Wait returns how it ends.
func (c *Commands) Connect(ctx context.Context, pid uint32, opts *ConnectOptions) (*CommandHandle, error) {
	if opts == nil {
		opts = &ConnectOptions{}
	}
	h := &CommandHandle{s: c.s, onStdout: opts.OnStdout, onStderr: opts.OnStderr}
	if err := h.open(ctx, "process.Process/Connect", "", map[string]any{"process": selector{PID: pid}}); err != nil {
		return nil, fmt.Errorf("connect to process %d in sandbox %s: %w", pid, c.s.ID, err)
	}
	return h, nil
}

// List returns the processes envd runs.
func (c *Commands) List(ctx context.Context) ([]ProcessInfo, error) {
	var r struct {
		Processes []struct {
			Config processConfig `json:"config"`
			PID    uint32        `json:"pid"`
			Tag    string        `json:"tag"`
		} `json:"processes"`
	}
	if err := c.s.unary(ctx, "process.Process/List", "", struct{}{}, &r, true); err != nil {
		return nil, fmt.Errorf("list processes in sandbox %s: %w", c.s.ID, err)
	}
	out := make([]ProcessInfo, len(r.Processes))
	for i, p := range r.Processes {
		out[i] = ProcessInfo{PID: p.PID, Tag: p.Tag, Cmd: p.Config.Cmd, Args: p.Config.Args, Envs: p.Config.Envs}
		if p.Config.Cwd != nil {
			out[i].Cwd = *p.Config.Cwd
		}
	}
	return out, nil
}

// Kill sends SIGKILL to process pid; a NotFoundError when it is not running.
func (c *Commands) Kill(ctx context.Context, pid uint32) error {
	req := map[string]any{"process": selector{PID: pid}, "signal": "SIGNAL_SIGKILL"}
	if err := c.s.unary(ctx, "process.Process/SendSignal", "", req, nil, false); err != nil {
		return fmt.Errorf("kill process %d in sandbox %s: %w", pid, c.s.ID, err)
	}
	return nil
}

// SendStdin writes data to process pid's standard input (it was started
// with RunOptions.Stdin).
func (c *Commands) SendStdin(ctx context.Context, pid uint32, data []byte) error {
	req := map[string]any{"process": selector{PID: pid}, "input": map[string][]byte{"stdin": data}}
	if err := c.s.unary(ctx, "process.Process/SendInput", "", req, nil, false); err != nil {
		return fmt.Errorf("stdin of process %d in sandbox %s: %w", pid, c.s.ID, err)
	}
	return nil
}

// CloseStdin closes process pid's standard input: it reads end of file.
func (c *Commands) CloseStdin(ctx context.Context, pid uint32) error {
	req := map[string]any{"process": selector{PID: pid}}
	if err := c.s.unary(ctx, "process.Process/CloseStdin", "", req, nil, false); err != nil {
		return fmt.Errorf("close stdin of process %d in sandbox %s: %w", pid, c.s.ID, err)
	}
	return nil
}

// open starts the stream of procedure and reads its start event.
func (h *CommandHandle) open(ctx context.Context, procedure, user string, req any) error {
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel) // until the start event
	st, err := h.s.openStream(sctx, procedure, user, req)
	if err != nil {
		stop()
		cancel()
		return ctxErr(ctx, err)
	}
	var ev processEvent
	err = st.next(&ev)
	stopped := stop()
	switch {
	case err == nil && ev.Event.Start == nil:
		err = errors.New("stream did not begin with a start event")
	case err == io.EOF:
		err = errors.New("stream ended before the process started")
	}
	if err != nil || !stopped {
		st.close()
		cancel()
		if err == nil {
			err = ctx.Err()
		}
		return ctxErr(ctx, err)
	}
	h.PID, h.st, h.cancel, h.done = ev.Event.Start.PID, st, cancel, make(chan struct{})
	go h.pump()
	return nil
}

// ctxErr prefers ctx's error to err when ctx ended.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// pump reads the stream until the process ends or the stream breaks.
func (h *CommandHandle) pump() {
	defer close(h.done)
	defer h.cancel()
	defer h.st.close()
	var res *CommandResult
	var err error
	for {
		var ev processEvent
		if err = h.st.next(&ev); err != nil {
			break
		}
		switch e := ev.Event; {
		case e.Data != nil:
			h.data(e.Data.Stdout, &h.stdout, h.onStdout)
			h.data(e.Data.Stderr, &h.stderr, h.onStderr)
			if len(e.Data.PTY) > 0 && h.onPTY != nil {
				h.onPTY(e.Data.PTY)
			}
		case e.End != nil:
			res = &CommandResult{ExitCode: e.End.ExitCode, Error: e.End.Error}
			if !e.End.Exited && res.ExitCode == 0 {
				res.ExitCode = -1
			}
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case res != nil:
		res.Stdout, res.Stderr = h.stdout.String(), h.stderr.String()
		h.result = res
		if res.ExitCode != 0 {
			h.err = &CommandExitError{*res}
		}
	case err == io.EOF:
		h.err = fmt.Errorf("process %d: stream ended without an end event", h.PID)
	default:
		h.err = fmt.Errorf("process %d: %w", h.PID, h.s.whyBroken(err))
	}
}

func (h *CommandHandle) data(b []byte, buf *bytes.Buffer, cb func([]byte)) {
	if len(b) == 0 {
		return
	}
	h.mu.Lock()
	buf.Write(b)
	h.mu.Unlock()
	if cb != nil {
		cb(b)
	}
}

// running says whether the output stream is still open.
func (h *CommandHandle) running() bool {
	select {
	case <-h.done:
		return false
	default:
		return true
	}
}

// Wait waits for the command to end and returns its result; a
// *CommandExitError for a non-zero exit. When ctx ends first Wait returns
// ctx's error and the command keeps running.
func (h *CommandHandle) Wait(ctx context.Context) (*CommandResult, error) {
	select {
	case <-h.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.result, h.err
}

// Stdout and Stderr return the output so far.
func (h *CommandHandle) Stdout() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stdout.String()
}

// Stderr returns the standard error so far.
func (h *CommandHandle) Stderr() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stderr.String()
}

// Kill sends SIGKILL to the command; Wait then returns its end.
func (h *CommandHandle) Kill(ctx context.Context) error { return h.s.Commands.Kill(ctx, h.PID) }

// SendStdin writes data to the command's standard input.
func (h *CommandHandle) SendStdin(ctx context.Context, data []byte) error {
	return h.s.Commands.SendStdin(ctx, h.PID, data)
}

// CloseStdin closes the command's standard input.
func (h *CommandHandle) CloseStdin(ctx context.Context) error {
	return h.s.Commands.CloseStdin(ctx, h.PID)
}

// Disconnect stops receiving the command's output; the command keeps
// running (Commands.Connect attaches again). Wait then returns an error.
func (h *CommandHandle) Disconnect() { h.cancel() }

// PTY opens interactive terminals in a sandbox (Sandbox.PTY).
type PTY struct{ s *Sandbox }

// PTYOptions are the options of PTY.Create.
type PTYOptions struct {
	// Cols and Rows are the terminal's size (default 80x24).
	Cols, Rows uint32
	// OnData receives the terminal's output.
	OnData func([]byte)
	// Envs, Cwd and User are as in RunOptions.
	Envs map[string]string
	Cwd  string
	User string
	// Cmd is the program (default an interactive login bash,
	// `/bin/bash -i -l`) and Args its arguments.
	Cmd  string
	Args []string
}

// Create starts a shell in a new terminal. The handle's Wait returns when
// the shell exits; its output goes to OnData.
func (p *PTY) Create(ctx context.Context, opts PTYOptions) (*CommandHandle, error) {
	if opts.Cols == 0 || opts.Rows == 0 {
		opts.Cols, opts.Rows = 80, 24
	}
	envs := map[string]string{"TERM": "xterm-256color", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
	for k, v := range opts.Envs {
		envs[k] = v
	}
	cmd, args := opts.Cmd, opts.Args
	if cmd == "" {
		cmd, args = "/bin/bash", []string{"-i", "-l"}
	}
	req := startRequest{
		Process: processConfig{Cmd: cmd, Args: args, Envs: envs},
		PTY:     &ptyConfig{Size: ptySize{Cols: opts.Cols, Rows: opts.Rows}},
	}
	if opts.Cwd != "" {
		req.Process.Cwd = &opts.Cwd
	}
	h := &CommandHandle{s: p.s, onPTY: opts.OnData}
	if err := h.open(ctx, "process.Process/Start", opts.User, req); err != nil {
		return nil, fmt.Errorf("open a terminal in sandbox %s: %w", p.s.ID, err)
	}
	return h, nil
}

// SendInput types data into terminal pid.
func (p *PTY) SendInput(ctx context.Context, pid uint32, data []byte) error {
	req := map[string]any{"process": selector{PID: pid}, "input": map[string][]byte{"pty": data}}
	if err := p.s.unary(ctx, "process.Process/SendInput", "", req, nil, false); err != nil {
		return fmt.Errorf("input to terminal %d in sandbox %s: %w", pid, p.s.ID, err)
	}
	return nil
}

// Resize resizes terminal pid (its programs get SIGWINCH).
func (p *PTY) Resize(ctx context.Context, pid uint32, cols, rows uint32) error {
	req := map[string]any{"process": selector{PID: pid}, "pty": ptyConfig{Size: ptySize{Cols: cols, Rows: rows}}}
	if err := p.s.unary(ctx, "process.Process/Update", "", req, nil, true); err != nil {
		return fmt.Errorf("resize terminal %d in sandbox %s: %w", pid, p.s.ID, err)
	}
	return nil
}

// Kill kills terminal pid.
func (p *PTY) Kill(ctx context.Context, pid uint32) error { return p.s.Commands.Kill(ctx, pid) }
