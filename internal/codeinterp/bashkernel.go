package codeinterp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// bashDriver reads cells from stdin ("<id> <bytes>\n" then the code), evals
// each in the one shell (variables, functions and cwd persist) and ends it
// with a NUL-led sentinel on stdout and on stderr, so each stream is
// complete when its sentinel arrives. SIGINT ends the running command; the
// trap keeps the shell.
const bashDriver = `trap ':' INT
while IFS=' ' read -r __id __n; do
  LC_ALL=C read -r -d '' -N "$__n" __code
  eval "$__code" </dev/null
  __rc=$?
  printf '\0END %s %s\n' "$__id" "$__rc"
  printf '\0END %s %s\n' "$__id" "$__rc" >&2
done
`

// Bash is the bash language: a persistent shell per context.
func Bash(bash string) Language {
	return Language{
		Start: func(ctx context.Context, dir string, env []string) (Kernel, error) {
			k := &bashKernel{argv: []string{bash, "--noprofile", "--norc", "-c", bashDriver}, dir: dir, env: env}
			if err := k.start(); err != nil {
				return nil, err
			}
			return k, nil
		},
		SetEnv: func(env map[string]string) string {
			var b strings.Builder
			for k, v := range env {
				if !validEnvName(k) {
					continue
				}
				fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(v))
			}
			return b.String()
		},
	}
}

func validEnvName(k string) bool {
	if k == "" {
		return false
	}
	for i, c := range k {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

type bashKernel struct {
	argv []string
	dir  string
	env  []string

	mu sync.Mutex // one execution at a time
	kernelProcess
	in  io.WriteCloser // guarded by life
	seq int
	cur *jsRun
}

func (k *bashKernel) start() error {
	cmd := exec.Command(k.argv[0], k.argv[1:]...)
	cmd.Dir, cmd.Env = k.dir, k.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	in, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start bash: %w", err)
	}
	dead := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); k.read(stdout, "stdout") }()
	go func() { defer wg.Done(); k.read(stderr, "stderr") }()
	go func() {
		wg.Wait()
		_ = cmd.Wait()
		close(dead)
	}()
	k.life.Lock()
	err = k.setLocked(cmd, dead)
	if err == nil {
		k.in = in
	}
	k.life.Unlock()
	return err
}

func (k *bashKernel) deliver(ev jsEvent) {
	k.life.Lock()
	r := k.cur
	k.life.Unlock()
	if r != nil {
		select {
		case r.ch <- ev:
		case <-r.done:
		}
	}
}

// read forwards a stream's text; a sentinel "\0END <id> <rc>\n" ends the
// stream's part of a cell (an event with end set and the exit code).
func (k *bashKernel) read(r io.Reader, name string) {
	br := bufio.NewReaderSize(r, 32<<10)
	for {
		chunk, err := br.ReadSlice(0)
		text := chunk
		if err == nil {
			text = chunk[:len(chunk)-1]
		}
		if len(text) > 0 {
			k.deliver(jsEvent{line: map[string]any{"type": name, "text": string(text)}})
		}
		switch {
		case err == nil:
			line, lerr := br.ReadString('\n')
			if lerr != nil {
				return
			}
			f := strings.Fields(line)
			if len(f) == 3 && f[0] == "END" {
				rc, _ := strconv.Atoi(f[2])
				k.deliver(jsEvent{line: map[string]any{"rc": rc}, end: true})
			}
		case errors.Is(err, bufio.ErrBufferFull):
		default:
			return
		}
	}
}

// Execute evals code in the shell; env is exported for this cell only
// (in a subshell-free way: saved and restored around it).
func (k *bashKernel) Execute(ctx context.Context, code string, env map[string]string, emit Emit) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if emit == nil {
		emit = func(map[string]any) error { return nil }
	}
	if len(env) > 0 {
		var set, unset strings.Builder
		for n, v := range env {
			if !validEnvName(n) {
				continue
			}
			fmt.Fprintf(&set, "if [ \"${%[1]s+x}\" = x ]; then __cocoon_old_%[1]s=\"$%[1]s\"; fi; export %[1]s=%[2]s\n", n, shellQuote(v))
			fmt.Fprintf(&unset, "if [ \"${__cocoon_old_%[1]s+x}\" = x ]; then export %[1]s=\"$__cocoon_old_%[1]s\"; unset __cocoon_old_%[1]s; else unset %[1]s; fi\n", n)
		}
		if err := k.run(ctx, set.String(), func(map[string]any) error { return nil }); err != nil {
			return err
		}
		defer k.run(context.WithoutCancel(ctx), unset.String(), func(map[string]any) error { return nil })
	}
	return k.run(ctx, code, emit)
}

func (k *bashKernel) run(ctx context.Context, code string, emit Emit) error {
	k.seq++
	cur := &jsRun{ch: make(chan jsEvent, 64), done: make(chan struct{})}
	k.life.Lock()
	in, dead := k.in, k.dead
	k.cur = cur
	k.life.Unlock()
	defer func() {
		k.life.Lock()
		k.cur = nil
		k.life.Unlock()
		close(cur.done)
	}()
	if _, err := fmt.Fprintf(in, "%d %d\n%s", k.seq, len(code), code); err != nil {
		return fmt.Errorf("send to bash: %w", err)
	}
	done := ctx.Done()
	var kill <-chan time.Time
	ends, rc := 0, 0
	for {
		select {
		case <-done:
			done = nil
			_ = k.Interrupt()
			kill = time.After(3 * time.Second)
		case <-kill:
			if err := k.restart(); err != nil {
				return fmt.Errorf("the command did not stop on interrupt; restart failed: %w", err)
			}
			return ctx.Err()
		case <-dead:
			_ = emit(map[string]any{"type": "error", "name": "KernelDied", "value": "the shell exited during the execution; it was restarted", "traceback": ""})
			if err := k.restart(); err != nil {
				return err
			}
			return ctx.Err()
		case ev := <-cur.ch:
			if !ev.end {
				if err := emit(ev.line); err != nil {
					return err
				}
				continue
			}
			rc, _ = ev.line["rc"].(int)
			if ends++; ends < 2 {
				continue
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if rc != 0 {
				return emit(map[string]any{"type": "error", "name": "ExitCode", "value": strconv.Itoa(rc), "traceback": "the last command exited with " + strconv.Itoa(rc)})
			}
			return nil
		}
	}
}

func (k *bashKernel) Interrupt() error {
	k.life.Lock()
	defer k.life.Unlock()
	if k.proc == nil {
		return errors.New("no kernel")
	}
	return syscall.Kill(-k.proc.Process.Pid, syscall.SIGINT)
}

func (k *bashKernel) Restart(context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.restart()
}

func (k *bashKernel) restart() error {
	k.stop()
	return k.start()
}
