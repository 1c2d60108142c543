package orchestrator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cocoon-run/cocoon/internal/runtime"
)

// reconcile re-adopts the sandboxes named by records and removes everything
// else: stray runtime processes, sandbox directories and network slots.
func (o *Orchestrator) reconcile(ctx context.Context) error {
	records, err := os.ReadDir(o.recordDir())
	if err != nil {
		return err
	}
	for _, r := range records {
		name := r.Name()
		if !strings.HasSuffix(name, ".json") {
			_ = os.Remove(filepath.Join(o.recordDir(), name)) // torn temp file
			continue
		}
		id := strings.TrimSuffix(name, ".json")
		if err := o.adopt(ctx, id); err != nil {
			o.log.Warn("sandbox not re-adopted; cleaning it up", "id", id, "err", err)
			_ = os.Remove(filepath.Join(o.recordDir(), name))
		}
	}
	// Runtimes name a sandbox by its ID, or by its RuntimeID when it came
	// from the warm pool.
	owned := map[string]bool{}
	o.mu.Lock()
	for id, e := range o.sandboxes {
		owned[id] = true
		owned[e.sb.runtimeName()] = true
	}
	o.mu.Unlock()
	keep := func(name string) bool { return owned[name] }
	var errs []error
	for name, rt := range o.cfg.Runtimes {
		switch rc := rt.(type) {
		case runtime.Reconciler:
			if err := rc.Reconcile(ctx, keep); err != nil {
				errs = append(errs, err)
				o.log.Warn("runtime reconcile", "runtime", name, "err", err)
			}
		case containerCleaner:
			if err := cleanContainers(ctx, rc, keep); err != nil {
				errs = append(errs, err)
				o.log.Warn("runtime reconcile", "runtime", name, "err", err)
			}
		}
	}
	// Whatever the drivers missed: any process whose command line names a
	// sandbox directory no one owns (e.g. a QEMU of a sandbox whose record
	// is gone) dies before its directory and slot are removed.
	if err := killStrays(o.sandboxRoot(), keep, o.log); err != nil {
		errs = append(errs, err)
	}
	dirs, err := os.ReadDir(o.sandboxRoot())
	if err != nil {
		return err
	}
	for _, d := range dirs {
		if !keep(d.Name()) {
			o.log.Info("removing leftover sandbox directory", "id", d.Name())
			errs = append(errs, os.RemoveAll(filepath.Join(o.sandboxRoot(), d.Name())))
		}
	}
	inUse := map[int]bool{}
	o.mu.Lock()
	for _, e := range o.sandboxes {
		if e.sb.Slot != nil {
			inUse[e.sb.Slot.Index] = true
		}
	}
	o.mu.Unlock()
	if err := o.cfg.Slots.Reconcile(ctx, func(i int) bool { return inUse[i] }); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (o *Orchestrator) adopt(ctx context.Context, id string) error {
	b, err := os.ReadFile(o.recordPath(id))
	if err != nil {
		return err
	}
	var sb Sandbox
	if err := json.Unmarshal(b, &sb); err != nil {
		return err
	}
	rt, _, err := o.runtimeFor(sb.Runtime)
	if err != nil {
		return err
	}
	inst, err := rt.Adopt(ctx, runtime.Spec{
		ID:       sb.runtimeName(),
		Dir:      filepath.Join(o.sandboxRoot(), sb.runtimeName()),
		VCPUs:    sb.VCPUs,
		MemoryMB: sb.MemoryMB,
		Slot:     sb.Slot,
	})
	if err != nil {
		return err
	}
	e := &entry{sb: sb, inst: inst}
	o.mu.Lock()
	o.sandboxes[id] = e
	o.mu.Unlock()
	go o.watch(id, e, inst)
	o.log.Info("re-adopted sandbox", "id", id, "runtime", sb.Runtime)
	return nil
}

// containerCleaner is implemented by drivers that keep a registry of their
// sandboxes (gVisor: runsc's state dir) and can force-remove one.
type containerCleaner interface {
	ListContainers(ctx context.Context) ([]string, error)
	Cleanup(ctx context.Context, id string) error
}

// cleanContainers removes every container of c that keep does not claim.
func cleanContainers(ctx context.Context, c containerCleaner, keep func(string) bool) error {
	ids, err := c.ListContainers(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		if !keep(id) {
			errs = append(errs, c.Cleanup(ctx, id))
		}
	}
	return errors.Join(errs...)
}

// killStrays SIGKILLs every process whose command line names a directory
// <root>/<id> for which keep(id) is false, and waits for them to go.
func killStrays(root string, keep func(string) bool, log *slog.Logger) error {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return fmt.Errorf("list processes: %w", err)
	}
	needle := []byte(filepath.Clean(root) + "/")
	var killed []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil {
			continue
		}
		id := sandboxInCmdline(cmdline, needle)
		if id == "" {
			// A QEMU that was prespawned names its files relative to its
			// working directory, the sandbox's (or a pool entry's).
			if cwd, err := os.Readlink(filepath.Join("/proc", p.Name(), "cwd")); err == nil {
				id = sandboxInCmdline([]byte(cwd+"/"), needle)
			}
		}
		if id == "" || keep(id) {
			continue
		}
		log.Info("killing a runtime process no sandbox owns", "pid", pid, "sandbox", id)
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			killed = append(killed, pid)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range killed {
		for processAlive(pid) {
			if time.Now().After(deadline) {
				return fmt.Errorf("process %d survived SIGKILL", pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
}

// sandboxInCmdline returns the first sandbox id named by a path under
// needle (<root>/) in a NUL-separated command line, or "".
func sandboxInCmdline(cmdline, needle []byte) string {
	i := bytes.Index(cmdline, needle)
	if i < 0 {
		return ""
	}
	rest := cmdline[i+len(needle):]
	end := bytes.IndexFunc(rest, func(r rune) bool { return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') })
	if end >= 0 {
		rest = rest[:end]
	}
	if !validID(string(rest)) {
		return ""
	}
	return string(rest)
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses.
	if j := bytes.LastIndexByte(b, ')'); j >= 0 && j+2 < len(b) {
		return b[j+2] != 'Z'
	}
	return true
}
