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
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cocoon-run/cocoon/internal/runtime"
)

// Parallelism of the startup work: re-adoptions (each a runsc or QMP
// round trip) and the removal of leftovers (runsc delete --force took
// 1.5–2 s per container).
const (
	adoptWorkers = 16
	sweepWorkers = 8
)

// reconcile re-adopts the sandboxes named by records (settling pauses a
// crash interrupted) and removes everything else: stray runtime processes
// and network slots at once, runtime state, sandbox directories and
// snapshots no paused record owns in the background (see sweep), so that
// the node answers within moments of its start. What it removes is what
// existed when it looked: sandboxes started afterwards are never touched.
func (o *Orchestrator) reconcile(ctx context.Context) error {
	records, err := os.ReadDir(o.recordDir())
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, adoptWorkers)
	for _, r := range records {
		name := r.Name()
		if !strings.HasSuffix(name, ".json") {
			_ = os.Remove(filepath.Join(o.recordDir(), name)) // torn temp file
			continue
		}
		id := strings.TrimSuffix(name, ".json")
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := o.adopt(ctx, id); err != nil {
				o.log.Warn("sandbox not re-adopted; cleaning it up", "id", id, "err", err)
				_ = os.Remove(filepath.Join(o.recordDir(), name))
			}
		}()
	}
	wg.Wait()
	// Runtimes name a sandbox by its ID, or by its RuntimeID when it came
	// from the warm pool.
	owned := map[string]bool{}
	inUse := map[int]bool{}
	o.mu.Lock()
	for id, e := range o.sandboxes {
		owned[id] = true
		owned[e.sb.runtimeName()] = true
		if e.sb.Slot != nil {
			inUse[e.sb.Slot.Index] = true
		}
	}
	o.mu.Unlock()
	keep := func(name string) bool { return owned[name] }
	var errs []error
	var tasks []sweepTask
	for name, rt := range o.cfg.Runtimes {
		switch rc := rt.(type) {
		case runtime.Reconciler:
			if err := rc.Reconcile(ctx, keep); err != nil {
				errs = append(errs, err)
				o.log.Warn("runtime reconcile", "runtime", name, "err", err)
			}
		case containerCleaner:
			ids, err := rc.ListContainers(ctx)
			if err != nil {
				errs = append(errs, err)
				o.log.Warn("runtime reconcile", "runtime", name, "err", err)
			}
			for _, id := range ids {
				if !keep(id) {
					tasks = append(tasks, sweepTask{what: name + " container", name: id,
						do: func(ctx context.Context) error { return rc.Cleanup(ctx, id) }})
				}
			}
		}
	}
	// Whatever the drivers missed: any process whose command line names a
	// sandbox directory no one owns (e.g. a QEMU of a sandbox whose record
	// is gone) is killed now; the sweep waits for it before removing its
	// directory.
	killed, err := killStrays(o.sandboxRoot(), keep, o.log)
	if err != nil {
		errs = append(errs, err)
	}
	dirs, err := os.ReadDir(o.sandboxRoot())
	if err != nil {
		return err
	}
	for _, d := range dirs {
		if !keep(d.Name()) {
			path := filepath.Join(o.sandboxRoot(), d.Name())
			tasks = append(tasks, sweepTask{what: "sandbox directory", name: d.Name(),
				do: func(context.Context) error { return os.RemoveAll(path) }})
		}
	}
	// A snapshot directory belongs to a paused sandbox when it holds its
	// record; any other (a pause that never finished) is owned by nothing.
	snaps, err := os.ReadDir(o.snapshotRoot())
	if err != nil {
		return err
	}
	for _, d := range snaps {
		o.mu.Lock()
		e := o.sandboxes[d.Name()]
		o.mu.Unlock()
		running := e != nil && e.sb.State == StateRunning
		if owned[d.Name()] && !running {
			continue
		}
		// A running sandbox's snapshot is what a resume a crash cut short
		// had not removed yet: the state lives in the sandbox again.
		if _, err := os.Stat(filepath.Join(o.snapshotRoot(), d.Name(), "record.json")); err == nil && !running {
			continue
		}
		path := filepath.Join(o.snapshotRoot(), d.Name())
		tasks = append(tasks, sweepTask{what: "snapshot without a paused record", name: d.Name(),
			do: func(context.Context) error { return os.RemoveAll(path) }})
	}
	// Slots now: their indices must be free before anything acquires one.
	if err := o.cfg.Slots.Reconcile(ctx, func(i int) bool { return inUse[i] }); err != nil {
		errs = append(errs, err)
	}
	go o.sweep(context.WithoutCancel(ctx), killed, tasks)
	return errors.Join(errs...)
}

// sweepTask removes one leftover.
type sweepTask struct {
	what, name string
	do         func(context.Context) error
}

// sweep removes the leftovers reconcile found, sweepWorkers at a time,
// once the stray processes it killed are gone, and logs each and a summary.
func (o *Orchestrator) sweep(ctx context.Context, killed []int, tasks []sweepTask) {
	defer close(o.swept)
	t0 := time.Now()
	if err := waitExited(killed, 10*time.Second); err != nil {
		o.log.Warn("startup sweep", "err", err)
	}
	var wg sync.WaitGroup
	var failed atomic.Int32
	sem := make(chan struct{}, sweepWorkers)
	for _, t := range tasks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := t.do(ctx); err != nil {
				failed.Add(1)
				o.log.Warn("startup sweep: could not remove "+t.what, "name", t.name, "err", err)
				return
			}
			o.log.Info("startup sweep: removed "+t.what+" no sandbox owns", "name", t.name)
		}()
	}
	wg.Wait()
	o.log.Info("startup sweep done", "killed", len(killed), "removed", len(tasks)-int(failed.Load()),
		"failed", failed.Load(), "took", time.Since(t0).Round(time.Millisecond))
}

// Swept is closed once the startup sweep of leftovers is over.
func (o *Orchestrator) Swept() <-chan struct{} { return o.swept }

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
	spec := runtime.Spec{
		ID:       sb.runtimeName(),
		Dir:      filepath.Join(o.sandboxRoot(), sb.runtimeName()),
		VCPUs:    sb.VCPUs,
		MemoryMB: sb.MemoryMB,
		Slot:     sb.Slot,
	}
	if sb.Pausing {
		return o.recoverPause(ctx, rt, spec, sb)
	}
	inst, err := rt.Adopt(ctx, spec)
	if err != nil {
		return err
	}
	o.register(sb, inst)
	o.log.Info("re-adopted sandbox", "id", id, "runtime", sb.Runtime)
	return nil
}

// register makes an adopted sandbox known and watches it.
func (o *Orchestrator) register(sb Sandbox, inst runtime.Instance) {
	e := &entry{sb: sb, inst: inst}
	o.mu.Lock()
	o.sandboxes[sb.ID] = e
	o.mu.Unlock()
	go o.watch(sb.ID, e, inst)
}

// pauseRecoveryTimeout bounds the wait for a save a crash interrupted
// (a 100 MiB gVisor sandbox checkpoints in about a second).
const pauseRecoveryTimeout = 2 * time.Minute

// recoverPause settles a pause that a crash interrupted: a whole saved
// state completes it (the sandbox is paused), anything else rolls it back
// (the sandbox runs on); a sandbox neither of which can save is reported
// dead, with the reason.
func (o *Orchestrator) recoverPause(ctx context.Context, rt runtime.Runtime, spec runtime.Spec, sb Sandbox) error {
	snap := o.SnapshotDir(sb.ID)
	if _, err := os.Stat(filepath.Join(snap, "record.json")); err == nil {
		// The pause finished; only the running record was left.
		_ = os.Remove(o.recordPath(sb.ID))
		o.log.Info("pause interrupted by a crash: it had finished", "id", sb.ID)
		return nil
	}
	var (
		inst     runtime.Instance
		complete bool
		err      error
	)
	if pr, ok := rt.(runtime.PauseRecoverer); ok {
		rctx, cancel := context.WithTimeout(ctx, pauseRecoveryTimeout)
		inst, complete, err = pr.RecoverPause(rctx, spec, filepath.Join(snap, "state"))
		cancel()
	} else {
		inst, err = rt.Adopt(ctx, spec)
	}
	if err == nil && complete {
		sb.Slot = nil // not adopted: the slot reconcile frees it
		if err := o.finishPause(ctx, &sb); err != nil {
			return err
		}
		o.log.Info("pause interrupted by a crash: completed from its whole saved state", "id", sb.ID)
		return nil
	}
	if rerr := os.RemoveAll(snap); rerr != nil {
		o.log.Warn("remove torn snapshot", "id", sb.ID, "err", rerr)
	}
	sb.Pausing, sb.Snapshot = false, ""
	if err != nil {
		_ = os.Remove(o.recordPath(sb.ID))
		sb.State, sb.Detail, sb.Slot, sb.Address = StateDead, "lost: its pause was interrupted by a crash and its state was not saved whole", nil, ""
		o.mu.Lock()
		o.sandboxes[sb.ID] = &entry{sb: sb}
		o.mu.Unlock()
		o.log.Warn("pause interrupted by a crash: sandbox lost", "id", sb.ID, "err", err)
		return nil
	}
	if err := o.writeRecord(&sb); err != nil {
		_ = inst.Kill(ctx)
		return err
	}
	o.register(sb, inst)
	o.log.Info("pause interrupted by a crash: rolled back, the sandbox runs on", "id", sb.ID)
	return nil
}

// containerCleaner is implemented by drivers that keep a registry of their
// sandboxes (gVisor: runsc's state dir) and can force-remove one.
type containerCleaner interface {
	ListContainers(ctx context.Context) ([]string, error)
	Cleanup(ctx context.Context, id string) error
}

// killStrays SIGKILLs every process whose command line names a directory
// <root>/<id> for which keep(id) is false, and returns their pids.
func killStrays(root string, keep func(string) bool, log *slog.Logger) ([]int, error) {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
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
	return killed, nil
}

// waitExited waits until every pid has exited.
func waitExited(pids []int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, pid := range pids {
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
