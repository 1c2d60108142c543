package gvisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cocoon-run/cocoon/internal/runtime"
)

// Files of a pause in progress, in the pause dir.
const (
	checkpointLock = "checkpoint.lock" // held by the checkpoint while it runs
	checkpointGo   = "checkpoint.go"   // the checkpoint may start; a recovery removes it
	checkpointDone = "checkpoint.done" // created once the image is whole
	checkpointLog  = "checkpoint.log"  // runsc's output
)

// checkpointScript runs runsc checkpoint and marks the image complete when
// it succeeds. It holds a lock on checkpoint.lock while it runs (runsc
// inherits it), and starts only if checkpoint.go is still there once it
// has the lock; a recovery removes that file under the lock: so a recovery
// after a crash either waits for a checkpoint under way or keeps it from
// starting, never misses one.
// Its output goes to a file, not to a pipe of ours: after an orchestrator
// crash a write to a closed pipe would kill it half-way.
const checkpointScript = `exec 9>>"$COCOON_CKPT_LOCK" && flock 9 && [ -e "$COCOON_CKPT_GO" ] &&
"$0" "$@" >"$COCOON_CKPT_LOG" 2>&1 && : >"$COCOON_CKPT_DONE"`

// checkpoint saves container id into dir/checkpoint (see Pause).
func (d *Driver) checkpoint(ctx context.Context, id, dir string) error {
	done := filepath.Join(dir, checkpointDone)
	logPath := filepath.Join(dir, checkpointLog)
	os.Remove(done)
	if err := os.WriteFile(filepath.Join(dir, checkpointGo), nil, 0o644); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	args := append([]string{"-c", checkpointScript, d.cfg.Runsc}, d.commandArgs()...)
	args = append(args, "checkpoint", "--image-path", checkpointDir(dir), id)
	cmd := exec.Command("/bin/sh", args...)
	cmd.Env = append(os.Environ(), "COCOON_CKPT_LOG="+logPath, "COCOON_CKPT_DONE="+done,
		"COCOON_CKPT_LOCK="+filepath.Join(dir, checkpointLock), "COCOON_CKPT_GO="+filepath.Join(dir, checkpointGo))
	// A process group of its own: a signal to the orchestrator's group
	// (Ctrl-C) does not cut the image short.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start runsc checkpoint: %w", err)
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	var err error
	select {
	case err = <-waitErr:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-waitErr
		err = ctx.Err()
	}
	if _, serr := os.Stat(done); err == nil && serr != nil {
		err = serr
	}
	if err != nil {
		out, _ := os.ReadFile(logPath)
		return fmt.Errorf("runsc checkpoint: %w: %s", err, lastLines(out, 5))
	}
	for _, f := range []string{checkpointDone, checkpointLog, checkpointLock, checkpointGo} {
		os.Remove(filepath.Join(dir, f))
	}
	return nil
}

// RecoverPause implements runtime.PauseRecoverer. It waits for a runsc
// checkpoint still running into dir (or keeps it from starting); a
// complete image (dir/checkpoint.done) finishes the pause, anything else
// is discarded and the container, if it still runs, is re-adopted.
func (d *Driver) RecoverPause(ctx context.Context, spec runtime.Spec, dir string) (runtime.Instance, bool, error) {
	if err := waitCheckpoint(ctx, dir); err != nil {
		return nil, false, fmt.Errorf("gvisor: recover pause of %s: %w", spec.ID, err)
	}
	if _, err := os.Stat(filepath.Join(dir, checkpointDone)); err == nil {
		if err := writeMeta(dir, d); err != nil {
			return nil, false, fmt.Errorf("gvisor: recover pause of %s: %w", spec.ID, err)
		}
		for _, f := range []string{checkpointDone, checkpointLog, checkpointLock, checkpointGo} {
			os.Remove(filepath.Join(dir, f))
		}
		var errs []error
		if err := d.remove(ctx, spec.ID); err != nil {
			errs = append(errs, err)
		}
		if err := os.RemoveAll(spec.Dir); err != nil {
			errs = append(errs, err)
		}
		if err := errors.Join(errs...); err != nil {
			return nil, false, fmt.Errorf("gvisor: recover pause of %s: %w", spec.ID, err)
		}
		return nil, true, nil
	}
	inst, err := d.Adopt(ctx, spec)
	if err != nil {
		out, _ := os.ReadFile(filepath.Join(dir, checkpointLog))
		return nil, false, fmt.Errorf("gvisor: pause of %s was cut short and the sandbox is gone: %w (runsc checkpoint said: %q)", spec.ID, err, lastLines(out, 5))
	}
	return inst, false, nil
}

// waitCheckpoint waits until no checkpoint into dir runs (it holds
// dir/checkpoint.lock), and keeps one from starting afterwards.
func waitCheckpoint(ctx context.Context, dir string) error {
	f, err := os.OpenFile(filepath.Join(dir, checkpointLock), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if errors.Is(err, os.ErrNotExist) {
		return nil // the pause never got as far as its directory
	}
	if err != nil {
		return err
	}
	defer f.Close()
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for runsc checkpoint: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	// Unlocked by the deferred Close.
	if err := os.Remove(filepath.Join(dir, checkpointGo)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
