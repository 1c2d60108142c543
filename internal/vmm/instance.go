package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cocoon-run/cocoon/internal/runtime"
	"github.com/cocoon-run/cocoon/internal/vmm/qmp"
)

// Instance is one QEMU process running a sandbox. It implements
// runtime.Instance.
type Instance struct {
	rt      *Runtime
	id      string
	dir     string
	pid     int
	machine machine
	qmp     *qmp.Conn
	done    chan struct{}
	cgroups []string

	mu   sync.Mutex
	dead bool // killed or paused: Kill only cleans up
}

func newInstance(r *Runtime, id, dir string, pid int, m machine) *Instance {
	return &Instance{rt: r, id: id, dir: dir, pid: pid, machine: m, done: make(chan struct{})}
}

// PID is the QEMU process id.
func (i *Instance) PID() int { return i.pid }

// Done is closed when the QEMU process exits.
func (i *Instance) Done() <-chan struct{} { return i.done }

// ConsoleLog is the guest's serial console log.
func (i *Instance) ConsoleLog() string { return consolePath(i.dir) }

// Accel is the accelerator the instance runs with.
func (i *Instance) Accel() Accel { return i.machine.Accel }

// Kill stops QEMU with SIGKILL (the sandbox's state is discarded, so there is
// nothing to shut down cleanly), waits for it to exit, and removes Spec.Dir
// and the instance's cgroups. It is idempotent.
func (i *Instance) Kill(ctx context.Context) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.dead = true
	if err := i.kill(); err != nil {
		return err
	}
	removeCgroups(i.cgroups)
	if err := os.RemoveAll(i.dir); err != nil {
		return fmt.Errorf("remove sandbox dir: %w", err)
	}
	return nil
}

// kill sends SIGKILL and waits for the process to be gone.
func (i *Instance) kill() error {
	select {
	case <-i.done:
	default:
		if err := syscall.Kill(i.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("kill qemu %d: %w", i.pid, err)
		}
		select {
		case <-i.done:
		case <-time.After(10 * time.Second):
			return fmt.Errorf("qemu %d did not exit after SIGKILL", i.pid)
		}
	}
	if i.qmp != nil {
		i.qmp.Close()
	}
	return nil
}

// Pause saves the whole sandbox into dir: a full migration stream (device
// state and every guest page: its private memory is not in any shared file),
// its qcow2 disk layer (moved, still backed on the template's layer) and the
// machine description; then it ends QEMU and removes Spec.Dir. If saving
// fails the guest is resumed and keeps running.
func (i *Instance) Pause(ctx context.Context, dir string) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.dead {
		return errors.New("pause: instance is dead")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create pause dir: %w", err)
	}
	m := i.machine
	m.Template = "" // the stream carries all of RAM
	err := i.saveState(ctx, filepath.Join(dir, stateName), false)
	if err != nil {
		// Best effort: let the sandbox run on.
		i.qmp.Execute(context.WithoutCancel(ctx), "cont", nil, nil)
		return fmt.Errorf("pause %s: %w", i.id, err)
	}
	i.dead = true
	if err := i.kill(); err != nil {
		return err
	}
	if err := moveFile(filepath.Join(i.dir, diskName), filepath.Join(dir, diskName)); err != nil {
		return fmt.Errorf("pause %s: save disk: %w", i.id, err)
	}
	if err := writeMeta(filepath.Join(dir, metaName), m); err != nil {
		return err
	}
	removeCgroups(i.cgroups)
	if err := os.RemoveAll(i.dir); err != nil {
		return fmt.Errorf("remove sandbox dir: %w", err)
	}
	return nil
}

// saveState stops the guest (which drains and flushes its disk I/O) and
// migrates to the file at path. With ignoreShared, RAM in share=on backends
// is left out (a template build: the memory file itself is the RAM).
//
// The stream goes through a descriptor passed over QMP (getfd + "fd:"):
// QEMU 7.2 has no file: URI, and its seccomp filter (spawn=deny) forbids
// the exec: URI.
func (i *Instance) saveState(ctx context.Context, path string, ignoreShared bool) error {
	q := i.qmp
	if err := q.Execute(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": ignoreShared}},
	}, nil); err != nil {
		return err
	}
	// The default bandwidth cap (32 MiB/s) is for live migration over a
	// network; a stopped guest going to a local file should not wait.
	if err := q.Execute(ctx, "migrate-set-parameters", map[string]any{
		"max-bandwidth": int64(1) << 40, "downtime-limit": 100000,
	}, nil); err != nil {
		return err
	}
	if err := q.Execute(ctx, "stop", nil, nil); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("create state file: %w", err)
	}
	defer f.Close()
	if err := q.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": "state"}, nil, f); err != nil {
		return err
	}
	if err := q.Execute(ctx, "migrate", map[string]any{"uri": "fd:state"}, nil); err != nil {
		return err
	}
	if err := waitMigration(ctx, q, i.done); err != nil {
		return err
	}
	return nil
}

// loadState feeds the state file at path to a QEMU started with -incoming
// defer, waits until it is loaded and starts the guest.
func (i *Instance) loadState(ctx context.Context, path string, ignoreShared bool) error {
	q := i.qmp
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open state file: %w", err)
	}
	defer f.Close()
	if err := q.Execute(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": ignoreShared}},
	}, nil); err != nil {
		return err
	}
	if err := q.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": "state"}, nil, f); err != nil {
		return err
	}
	if err := q.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:state"}, nil); err != nil {
		return err
	}
	if err := waitMigration(ctx, q, i.done); err != nil {
		return err
	}
	// The source was stopped when it saved, so the guest arrives paused.
	return q.Execute(ctx, "cont", nil, nil)
}

func waitMigration(ctx context.Context, q *qmp.Conn, done <-chan struct{}) error {
	for {
		var st struct {
			Status string `json:"status"`
			Error  string `json:"error-desc"`
		}
		if err := q.Execute(ctx, "query-migrate", nil, &st); err != nil {
			return err
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, st.Error)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for migration: %w", ctx.Err())
		case <-done:
			return errors.New("wait for migration: qemu exited")
		case <-time.After(time.Millisecond):
		}
	}
}

// moveFile renames src to dst, copying across filesystems.
func moveFile(src, dst string) error {
	if err := os.Rename(src, dst); err == nil || !errors.Is(err, syscall.EXDEV) {
		return err
	}
	return copyFile(src, dst)
}

// copyFile copies src to dst, as a reflink where the filesystem can.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) != nil {
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
	}
	return out.Close()
}

// RecoverPause implements runtime.PauseRecoverer. QEMU saves on its own
// once the migration has started, so an orchestrator crash during a Pause
// leaves it migrating, or stopped after the migration: a completed
// migration finishes the pause as Pause would have; anything else resumes
// the guest, which runs on.
func (r *Runtime) RecoverPause(ctx context.Context, spec runtime.Spec, dir string) (runtime.Instance, bool, error) {
	i, err := r.adopt(ctx, spec)
	if err != nil {
		return nil, false, fmt.Errorf("pause of %s was cut short and the sandbox is gone: %w", spec.ID, err)
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	var st struct {
		Status string `json:"status"`
	}
	if err := i.qmp.Execute(ctx, "query-migrate", nil, &st); err != nil {
		return nil, false, fmt.Errorf("recover pause of %s: %w", spec.ID, err)
	}
	if st.Status == "active" || st.Status == "setup" || st.Status == "device" {
		_ = waitMigration(ctx, i.qmp, i.done)
	}
	// query-migrate also reports the incoming migration a restore did:
	// only the run state tells an outgoing one that completed.
	var run struct {
		Status string `json:"status"`
	}
	if err := i.qmp.Execute(ctx, "query-status", nil, &run); err != nil {
		return nil, false, fmt.Errorf("recover pause of %s: %w", spec.ID, err)
	}
	if _, err := os.Stat(filepath.Join(dir, stateName)); run.Status != "postmigrate" || err != nil {
		if run.Status != "running" {
			if err := i.qmp.Execute(ctx, "cont", nil, nil); err != nil {
				return nil, false, fmt.Errorf("recover pause of %s: resume the guest: %w", spec.ID, err)
			}
		}
		return i, false, nil
	}
	m := i.machine
	m.Template = "" // the stream carries all of RAM
	i.dead = true
	if err := i.kill(); err != nil {
		return nil, false, err
	}
	if err := moveFile(filepath.Join(i.dir, diskName), filepath.Join(dir, diskName)); err != nil {
		return nil, false, fmt.Errorf("recover pause of %s: save disk: %w", spec.ID, err)
	}
	if err := writeMeta(filepath.Join(dir, metaName), m); err != nil {
		return nil, false, err
	}
	removeCgroups(i.cgroups)
	if err := os.RemoveAll(i.dir); err != nil {
		return nil, false, fmt.Errorf("remove sandbox dir: %w", err)
	}
	return nil, true, nil
}

// ExitReason implements runtime.ExitReasoner: a QEMU whose memory cgroup
// counted an OOM kill died of it.
func (i *Instance) ExitReason() string {
	for _, d := range i.cgroups {
		if runtime.OOMKillsIn(d) > 0 {
			return runtime.ReasonOOM
		}
	}
	return ""
}
