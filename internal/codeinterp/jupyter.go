package codeinterp

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// jupyterKernel is a Jupyter kernel process (ipykernel) spoken to over the
// Jupyter messaging protocol on its shell and iopub channels.
type jupyterKernel struct {
	argv []string // the kernel's command, {connection_file} replaced
	dir  string   // working directory
	tmp  string   // where connection files go
	env  []string

	mu sync.Mutex // one execution at a time
	kernelProcess
	shell   *zconn // these four are guarded by life too
	iopub   *zconn
	key     []byte
	session string

	routes sync.Map // parent msg_id → *route
}

type route struct {
	ch   chan *jmsg
	done chan struct{}
}

// jmsg is a decoded Jupyter message.
type jmsg struct {
	Header       jheader         `json:"header"`
	ParentHeader jheader         `json:"parent_header"`
	Content      json.RawMessage `json:"content"`
}

type jheader struct {
	MsgID   string `json:"msg_id"`
	MsgType string `json:"msg_type"`
	Date    string `json:"date"`
}

func newJupyterKernel(argv []string, dir, tmp string, env []string) *jupyterKernel {
	return &jupyterKernel{argv: argv, dir: dir, tmp: tmp, env: env}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// freePorts returns n TCP ports free on loopback now.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// start launches the kernel and waits until it answers on iopub.
func (k *jupyterKernel) start(ctx context.Context) error {
	ports, err := freePorts(5)
	if err != nil {
		return err
	}
	key := randHex(32)
	conn := map[string]any{
		"shell_port": ports[0], "iopub_port": ports[1], "stdin_port": ports[2], "control_port": ports[3], "hb_port": ports[4],
		"ip": "127.0.0.1", "key": key, "transport": "tcp", "signature_scheme": "hmac-sha256", "kernel_name": "",
	}
	b, _ := json.Marshal(conn)
	cf := filepath.Join(k.tmp, "kernel-"+randHex(8)+".json")
	if err := os.WriteFile(cf, b, 0o600); err != nil {
		return fmt.Errorf("write connection file: %w", err)
	}
	argv := make([]string, len(k.argv))
	for i, a := range k.argv {
		argv[i] = strings.ReplaceAll(a, "{connection_file}", cf)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir, cmd.Env = k.dir, k.env
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	// Its own process group: an interrupt reaches the kernel, not us.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start kernel %s: %w", argv[0], err)
	}
	dead := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		os.Remove(cf)
		close(dead)
	}()
	fail := func(err error) error {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-dead
		return err
	}
	addr := func(p int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)) }
	// The kernel binds its ports a few hundred ms after start (imports).
	dial := func(p int, typ string) (*zconn, error) {
		for {
			z, err := zdial(ctx, addr(p), typ)
			if err == nil {
				return z, nil
			}
			select {
			case <-dead:
				return nil, errors.New("kernel exited at start")
			case <-ctx.Done():
				return nil, fmt.Errorf("kernel did not start: %w", ctx.Err())
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	iopub, err := dial(ports[1], "SUB")
	if err != nil {
		return fail(err)
	}
	if err := iopub.subscribe(); err != nil {
		iopub.Close()
		return fail(err)
	}
	shell, err := dial(ports[0], "DEALER")
	if err != nil {
		iopub.Close()
		return fail(err)
	}
	k.life.Lock()
	err = k.setLocked(cmd, dead)
	if err == nil {
		k.shell, k.iopub, k.key, k.session = shell, iopub, []byte(key), randHex(16)
	}
	k.life.Unlock()
	if err != nil {
		shell.Close()
		iopub.Close()
		return fail(err)
	}
	go k.read(shell, dead)
	go k.read(iopub, dead)

	// A SUB connection sees only what is published after the PUB side
	// processed the subscription: ask for kernel_info until its status
	// messages arrive on iopub (what jupyter_client does too).
	for {
		id, r := k.register()
		if err := k.send(shell, id, "kernel_info_request", map[string]any{}); err != nil {
			k.unregister(id)
			return fail(err)
		}
		select {
		case <-r.ch:
			k.unregister(id)
			return nil
		case <-time.After(200 * time.Millisecond):
			k.unregister(id)
		case <-dead:
			k.unregister(id)
			return errors.New("kernel exited at start")
		case <-ctx.Done():
			k.unregister(id)
			return fail(fmt.Errorf("kernel did not answer: %w", ctx.Err()))
		}
	}
}

func (k *jupyterKernel) register() (string, *route) {
	id := randHex(16)
	r := &route{ch: make(chan *jmsg, 64), done: make(chan struct{})}
	k.routes.Store(id, r)
	return id, r
}

func (k *jupyterKernel) unregister(id string) {
	if r, ok := k.routes.LoadAndDelete(id); ok {
		close(r.(*route).done)
	}
}

// read routes the messages of one channel to their executions by parent
// msg_id; a reader blocks while its execution's consumer is slow (so a
// huge output streams through at the client's pace, never buffered whole).
func (k *jupyterKernel) read(z *zconn, dead chan struct{}) {
	defer z.Close()
	go func() { <-dead; z.Close() }()
	for {
		parts, err := z.recv()
		if err != nil {
			return
		}
		i := 0
		for i < len(parts) && string(parts[i]) != "<IDS|MSG>" {
			i++
		}
		if len(parts) < i+6 {
			continue
		}
		var m jmsg
		if json.Unmarshal(parts[i+2], &m.Header) != nil || json.Unmarshal(parts[i+3], &m.ParentHeader) != nil {
			continue
		}
		m.Content = parts[i+5]
		v, ok := k.routes.Load(m.ParentHeader.MsgID)
		if !ok {
			continue
		}
		r := v.(*route)
		select {
		case r.ch <- &m:
		case <-r.done:
		}
	}
}

func (k *jupyterKernel) send(z *zconn, id, typ string, content any) error {
	header, _ := json.Marshal(map[string]any{
		"msg_id": id, "username": "cocoon", "session": k.session, "msg_type": typ, "version": "5.3",
		"date": time.Now().UTC().Format(time.RFC3339Nano),
	})
	body, err := json.Marshal(content)
	if err != nil {
		return err
	}
	parts := [][]byte{[]byte("<IDS|MSG>"), nil, header, []byte("{}"), []byte("{}"), body}
	mac := hmac.New(sha256.New, k.key)
	for _, p := range parts[2:] {
		mac.Write(p)
	}
	parts[1] = []byte(hex.EncodeToString(mac.Sum(nil)))
	return z.send(parts)
}

// Execute runs code and emits its outputs as NDJSON lines. env, when not
// empty, is set in os.environ for this execution and restored after.
func (k *jupyterKernel) Execute(ctx context.Context, code string, env map[string]string, emit Emit) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(env) > 0 {
		b, _ := json.Marshal(env)
		set := "import os as __o, json as __j\n__cocoon_env = {k: __o.environ.get(k) for k in __j.loads(" + strconv.Quote(string(b)) + ")}\n" +
			"__o.environ.update(__j.loads(" + strconv.Quote(string(b)) + "))\ndel __o, __j"
		if err := k.silent(ctx, set); err != nil {
			return err
		}
		defer k.silent(context.WithoutCancel(ctx), "import os as __o\nfor __k, __v in __cocoon_env.items():\n"+
			"    (__o.environ.pop(__k, None) if __v is None else __o.environ.__setitem__(__k, __v))\ndel __o, __cocoon_env")
	}
	return k.execute(ctx, code, false, emit)
}

// silent runs code without output or history (env vars, set-up).
func (k *jupyterKernel) silent(ctx context.Context, code string) error {
	var failed error
	err := k.execute(ctx, code, true, func(line map[string]any) error {
		if line["type"] == "error" {
			failed = fmt.Errorf("%v: %v", line["name"], line["value"])
		}
		return nil
	})
	if err != nil {
		return err
	}
	return failed
}

func (k *jupyterKernel) execute(ctx context.Context, code string, silent bool, emit Emit) error {
	k.life.Lock()
	shell, dead := k.shell, k.dead
	k.life.Unlock()
	id, r := k.register()
	defer k.unregister(id)
	if err := k.send(shell, id, "execute_request", map[string]any{
		"code": code, "silent": silent, "store_history": !silent, "user_expressions": map[string]any{}, "allow_stdin": false, "stop_on_error": true,
	}); err != nil {
		return fmt.Errorf("send execute request: %w", err)
	}
	started := false
	interrupted := time.Time{}
	var kill <-chan time.Time
	done := ctx.Done()
	for {
		select {
		case <-done:
			// The client went away or its timeout passed: interrupt, and
			// restart a kernel that does not come back to idle.
			done = nil
			interrupted = time.Now()
			_ = k.Interrupt()
			kill = time.After(3 * time.Second)
		case <-kill:
			return k.restartAfter(ctx, "the execution did not stop on interrupt")
		case <-dead:
			_ = emit(map[string]any{"type": "error", "name": "KernelDied", "value": "the kernel exited during the execution; it was restarted", "traceback": ""})
			if err := k.restartAfter(ctx, "kernel died"); err != nil {
				return err
			}
			return nil
		case m := <-r.ch:
			var c map[string]any
			_ = json.Unmarshal(m.Content, &c)
			switch m.Header.MsgType {
			case "execute_input":
				started = true
				if n, ok := c["execution_count"]; ok && !silent {
					if err := emit(map[string]any{"type": "number_of_executions", "execution_count": n}); err != nil {
						return err
					}
				}
			case "stream":
				name, _ := c["name"].(string)
				if name != "stdout" && name != "stderr" {
					continue
				}
				if err := emit(map[string]any{"type": name, "text": c["text"], "timestamp": m.Header.Date}); err != nil {
					return err
				}
			case "display_data", "execute_result":
				data, _ := c["data"].(map[string]any)
				if err := emit(resultLine(data, m.Header.MsgType == "execute_result")); err != nil {
					return err
				}
			case "error":
				if err := emit(errorLine(c)); err != nil {
					return err
				}
			case "status":
				if c["execution_state"] == "idle" && (started || silent) {
					if !interrupted.IsZero() {
						return ctx.Err()
					}
					return nil
				}
			}
		}
	}
}

func (k *jupyterKernel) restartAfter(ctx context.Context, why string) error {
	if err := k.restart(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("%s; restart failed: %w", why, err)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return nil
}

// errorLine is an error output: name, value and the traceback's lines.
func errorLine(c map[string]any) map[string]any {
	var tb []string
	if l, ok := c["traceback"].([]any); ok {
		for _, x := range l {
			s, _ := x.(string)
			tb = append(tb, s)
		}
	}
	return map[string]any{"type": "error", "name": c["ename"], "value": c["evalue"], "traceback": strings.Join(tb, "\n")}
}

// mimeKeys are the MIME types the SDK's Result has a field for.
var mimeKeys = map[string]string{
	"text/plain": "text", "text/html": "html", "text/markdown": "markdown", "image/svg+xml": "svg",
	"image/png": "png", "image/jpeg": "jpeg", "application/pdf": "pdf", "text/latex": "latex",
	"application/json": "json", "application/javascript": "javascript",
	"e2b/data": "data", "e2b/chart": "chart",
}

// resultLine maps a display_data / execute_result bundle to a result line;
// other MIME types keep their name (the SDK puts them in Result.extra).
func resultLine(data map[string]any, main bool) map[string]any {
	line := map[string]any{"type": "result", "is_main_result": main}
	for mime, v := range data {
		if key, ok := mimeKeys[mime]; ok {
			line[key] = v
		} else {
			line[mime] = v
		}
	}
	return line
}

// Interrupt sends SIGINT to the kernel (interrupt_mode "signal").
func (k *jupyterKernel) Interrupt() error {
	k.life.Lock()
	defer k.life.Unlock()
	if k.proc == nil || k.proc.Process == nil {
		return errors.New("no kernel")
	}
	return k.proc.Process.Signal(syscall.SIGINT)
}

// Restart kills the kernel and starts a new one (state is lost).
func (k *jupyterKernel) Restart(ctx context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.restart(ctx)
}

func (k *jupyterKernel) restart(ctx context.Context) error {
	k.stop()
	ctx, cancel := context.WithTimeout(ctx, kernelStartTimeout)
	defer cancel()
	return k.start(ctx)
}
