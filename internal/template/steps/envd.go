package steps

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"connectrpc.com/connect"

	processpb "github.com/cocoon-run/cocoon/api/gen/process"
	"github.com/cocoon-run/cocoon/api/gen/process/processconnect"
	"github.com/cocoon-run/cocoon/internal/envd/identity"
	"github.com/cocoon-run/cocoon/internal/envd/initreq"
)

// Envd drives one sandbox's envd: processes, file uploads and /init.
type Envd struct {
	// URL is envd's base URL, e.g. "http://10.230.0.2:49983".
	URL string
	// Token is the sandbox's envd access token ("" if none).
	Token string
	// HTTP is the client to use (default http.DefaultClient).
	HTTP *http.Client
}

func (e *Envd) client() *http.Client {
	if e.HTTP != nil {
		return e.HTTP
	}
	return http.DefaultClient
}

func (e *Envd) header(h http.Header, user string) {
	if e.Token != "" {
		h.Set("X-Access-Token", e.Token)
	}
	if user != "" {
		identity.SetBasicAuth(h, user)
	}
}

// Cmd is a process to start in the sandbox.
type Cmd struct {
	Path string
	Args []string
	Env  map[string]string
	Dir  string
	User string
}

// Shell returns a Cmd running script with bash -l -c, as commands.run does.
func Shell(script string, st State, user string) Cmd {
	if user == "" {
		user = st.user()
	}
	return Cmd{Path: "/bin/bash", Args: []string{"-l", "-c", script}, Env: st.Env, Dir: st.Workdir, User: user}
}

// ExitError is a process that ended with a non-zero exit code.
type ExitError struct {
	Code   int
	Status string
}

func (e *ExitError) Error() string {
	if e.Status != "" && e.Status != fmt.Sprintf("exit status %d", e.Code) {
		return fmt.Sprintf("exit code %d (%s)", e.Code, e.Status)
	}
	return fmt.Sprintf("exit code %d", e.Code)
}

func (e *Envd) start(ctx context.Context, c Cmd) (*connect.ServerStreamForClient[processpb.StartResponse], error) {
	pc := processconnect.NewProcessClient(e.client(), strings.TrimRight(e.URL, "/"))
	cfg := &processpb.ProcessConfig{Cmd: c.Path, Args: c.Args, Envs: c.Env}
	if c.Dir != "" {
		d := c.Dir
		cfg.Cwd = &d
	}
	no := false
	req := connect.NewRequest(&processpb.StartRequest{Process: cfg, Stdin: &no})
	e.header(req.Header(), c.User)
	return pc.Start(ctx, req)
}

// Run runs c to its end, passing its output to stdout and stderr (either
// may be nil). A non-zero exit is an *ExitError.
func (e *Envd) Run(ctx context.Context, c Cmd, stdout, stderr io.Writer) error {
	stream, err := e.start(ctx, c)
	if err != nil {
		return fmt.Errorf("start %s: %w", c.Path, err)
	}
	defer stream.Close()
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		if d := ev.GetData(); d != nil {
			if b := d.GetStdout(); len(b) > 0 && stdout != nil {
				if _, err := stdout.Write(b); err != nil {
					return err
				}
			}
			if b := d.GetStderr(); len(b) > 0 && stderr != nil {
				if _, err := stderr.Write(b); err != nil {
					return err
				}
			}
		}
		if end := ev.GetEnd(); end != nil {
			if end.GetExitCode() != 0 || !end.GetExited() {
				return &ExitError{Code: int(end.GetExitCode()), Status: end.GetStatus()}
			}
			return nil
		}
	}
	if err := stream.Err(); err != nil {
		return fmt.Errorf("run %s: %w", c.Path, err)
	}
	return errors.New("process stream ended without an end event")
}

// Start starts c and returns once it runs, leaving it running in the
// background (envd keeps a process when its stream closes).
func (e *Envd) Start(ctx context.Context, c Cmd) (pid uint32, err error) {
	stream, err := e.start(ctx, c)
	if err != nil {
		return 0, fmt.Errorf("start %s: %w", c.Path, err)
	}
	defer stream.Close()
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		if s := ev.GetStart(); s != nil {
			return s.GetPid(), nil
		}
		if end := ev.GetEnd(); end != nil {
			return 0, fmt.Errorf("start %s: ended at once: %w", c.Path, &ExitError{Code: int(end.GetExitCode()), Status: end.GetStatus()})
		}
	}
	if err := stream.Err(); err != nil {
		return 0, fmt.Errorf("start %s: %w", c.Path, err)
	}
	return 0, errors.New("process stream ended before the process started")
}

// Upload writes r to path in the sandbox as user.
func (e *Envd) Upload(ctx context.Context, path, user string, r io.Reader) error {
	q := url.Values{"path": {path}}
	if user != "" {
		q.Set("username", user)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(e.URL, "/")+"/files?"+q.Encode(), r)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	e.header(req.Header, "")
	resp, err := e.client().Do(req)
	if err != nil {
		return fmt.Errorf("upload %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("upload %s: %s: %s", path, resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}

// Init sends envd's /init: default environment variables, user and
// working directory for every later process.
func (e *Envd) Init(ctx context.Context, env map[string]string, defaultUser, defaultWorkdir string) error {
	return initreq.Send(ctx, e.client(), e.URL, e.Token, initreq.Request{EnvVars: env, DefaultUser: defaultUser,
		DefaultWorkdir: defaultWorkdir, Timestamp: time.Now().UTC().Format(time.RFC3339Nano)})
}

// WaitReady runs the ready command (bash -l -c) every interval until it
// exits 0 or ctx ends; it returns the last failure with ctx's error.
func (e *Envd) WaitReady(ctx context.Context, c Cmd, interval time.Duration) error {
	var last error
	for {
		var out bytes.Buffer
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := e.Run(rctx, c, &out, &out)
		cancel()
		if err == nil {
			return nil
		}
		last = fmt.Errorf("%w: %s", err, tail(out.String(), 300))
		select {
		case <-ctx.Done():
			return fmt.Errorf("ready command never succeeded: %w (last: %v)", ctx.Err(), last)
		case <-time.After(interval):
		}
	}
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
