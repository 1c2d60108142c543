package codeinterp

import (
	"bufio"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

//go:embed kernel.js
var jsKernelSource []byte

// JavaScript is the JavaScript language on a kernel of our own on Node's
// vm module (kernel.js): no Jupyter kernel for Node is packaged in Debian,
// and the npm ones need native builds.
func JavaScript(node, tmp string) (Language, error) {
	return nodeLanguage(node, tmp, false)
}

// TypeScript is the JavaScript kernel with each cell transpiled by
// Debian's node-typescript (types stripped, not checked).
func TypeScript(node, tmp string) (Language, error) {
	return nodeLanguage(node, tmp, true)
}

// HasTypeScript reports whether node can load the typescript module.
func HasTypeScript(node string) bool {
	return exec.Command(node, "-e", "require('typescript')").Run() == nil
}

func nodeLanguage(node, tmp string, ts bool) (Language, error) {
	script := filepath.Join(tmp, "kernel.js")
	if err := os.WriteFile(script, jsKernelSource, 0o644); err != nil {
		return Language{}, fmt.Errorf("write javascript kernel: %w", err)
	}
	return Language{
		Start: func(ctx context.Context, dir string, env []string) (Kernel, error) {
			if ts {
				env = append(env[:len(env):len(env)], "COCOON_KERNEL_TS=1")
			}
			k := &jsKernel{argv: []string{node, script}, dir: dir, env: env}
			ctx, cancel := context.WithTimeout(ctx, kernelStartTimeout)
			defer cancel()
			if err := k.start(ctx); err != nil {
				return nil, err
			}
			return k, nil
		},
		SetEnv: func(env map[string]string) string {
			b, _ := json.Marshal(env)
			return "Object.assign(process.env, " + string(b) + "); undefined"
		},
	}, nil
}

type jsKernel struct {
	argv []string
	dir  string
	env  []string

	mu sync.Mutex // one execution at a time
	kernelProcess
	in  io.WriteCloser // guarded by life
	seq int
	cur *jsRun // the running execution
}

// jsRun is one execution's event channel; done ends its delivery.
type jsRun struct {
	ch   chan jsEvent
	done chan struct{}
}

type jsEvent struct {
	line map[string]any
	end  bool
}

func (k *jsKernel) start(ctx context.Context) error {
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
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.ExtraFiles = []*os.File{pw}
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return fmt.Errorf("start node: %w", err)
	}
	pw.Close()
	dead := make(chan struct{})
	ready := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); k.readProto(pr, ready) }()
	go func() { defer wg.Done(); k.readRaw(stdout, "stdout") }()
	go func() { defer wg.Done(); k.readRaw(stderr, "stderr") }()
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
	if err != nil {
		return err
	}
	select {
	case <-ready:
		return nil
	case <-dead:
		return errors.New("node exited at start")
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		return fmt.Errorf("node did not start: %w", ctx.Err())
	}
}

func (k *jsKernel) deliver(ev jsEvent) {
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

func (k *jsKernel) readProto(r io.ReadCloser, ready chan struct{}) {
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			continue
		}
		typ, _ := m["type"].(string)
		if typ == "ready" {
			close(ready)
			continue
		}
		delete(m, "id")
		k.deliver(jsEvent{line: m, end: typ == "end"})
	}
}

func (k *jsKernel) readRaw(r io.Reader, name string) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			k.deliver(jsEvent{line: map[string]any{"type": name, "text": string(buf[:n])}})
		}
		if err != nil {
			return
		}
	}
}

// Execute runs code in the kernel's context; env is set in process.env for
// this execution and restored after.
func (k *jsKernel) Execute(ctx context.Context, code string, env map[string]string, emit Emit) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(env) > 0 {
		b, _ := json.Marshal(env)
		set := "globalThis.__cocoonEnv = Object.fromEntries(Object.keys(" + string(b) + ").map(k => [k, process.env[k]])); Object.assign(process.env, " + string(b) + "); undefined"
		if err := k.run(ctx, set, func(map[string]any) error { return nil }); err != nil {
			return err
		}
		defer k.run(context.WithoutCancel(ctx), "for (const [k, v] of Object.entries(globalThis.__cocoonEnv)) { if (v === undefined) delete process.env[k]; else process.env[k] = v }; delete globalThis.__cocoonEnv; undefined", func(map[string]any) error { return nil })
	}
	if emit == nil {
		emit = func(map[string]any) error { return nil }
	}
	return k.run(ctx, code, emit)
}

func (k *jsKernel) run(ctx context.Context, code string, emit Emit) error {
	k.seq++
	cur := &jsRun{ch: make(chan jsEvent, 64), done: make(chan struct{})}
	ch := cur.ch
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
	req, _ := json.Marshal(map[string]any{"id": strconv.Itoa(k.seq), "code": code})
	if _, err := in.Write(append(req, '\n')); err != nil {
		return fmt.Errorf("send to node: %w", err)
	}
	done := ctx.Done()
	var kill <-chan time.Time
	interrupted := false
	for {
		select {
		case <-done:
			done, interrupted = nil, true
			_ = k.Interrupt()
			kill = time.After(3 * time.Second)
		case <-kill:
			if err := k.restart(context.WithoutCancel(ctx)); err != nil {
				return fmt.Errorf("the execution did not stop on interrupt; restart failed: %w", err)
			}
			return ctx.Err()
		case <-dead:
			_ = emit(map[string]any{"type": "error", "name": "KernelDied", "value": "the JavaScript kernel exited during the execution; it was restarted", "traceback": ""})
			if err := k.restart(context.WithoutCancel(ctx)); err != nil {
				return err
			}
			return ctx.Err()
		case ev := <-ch:
			if ev.end {
				if interrupted {
					return ctx.Err()
				}
				return nil
			}
			if err := emit(ev.line); err != nil {
				return err
			}
		}
	}
}

func (k *jsKernel) Interrupt() error {
	k.life.Lock()
	defer k.life.Unlock()
	if k.proc == nil {
		return errors.New("no kernel")
	}
	return k.proc.Process.Signal(syscall.SIGINT)
}

func (k *jsKernel) Restart(ctx context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.restart(ctx)
}

func (k *jsKernel) restart(ctx context.Context) error {
	k.stop()
	ctx, cancel := context.WithTimeout(ctx, kernelStartTimeout)
	defer cancel()
	return k.start(ctx)
}
