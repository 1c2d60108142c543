package gvisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cocoon-run/cocoon/internal/runtime"
)

// Files of a pause in progress, in the pause dir.
const (
	checkpointPID  = "checkpoint.pid"  // pid of the shell running runsc checkpoint
	checkpointDone = "checkpoint.done" // created once the image is whole
	checkpointLog  = "checkpoint.log"  // runsc's output
)

// checkpointScript runs runsc checkpoint and marks the image complete when
// it succeeds. Its output goes to a file, not to a pipe of ours: after an
// orchestrator crash a write to a closed pipe would kill it half-way.
const checkpointScript = `"$0" "$@" >"$COCOON_CKPT_LOG" 2>&1 && : >"$COCOON_CKPT_DONE"`

// checkpoint saves container id into dir/checkpoint (see Pause).
func (d *Driver) checkpoint(ctx context.Context, id, dir string) error {
	done := filepath.Join(dir, checkpointDone)
	logPath := filepath.Join(dir, checkpointLog)
	os.Remove(done)
	args := append([]string{"-c", checkpointScript, d.cfg.Runsc}, d.globalArgs("")...)
	args = append(args, "checkpoint", "--image-path", checkpointDir(dir), id)
	cmd := exec.Command("/bin/sh", args...)
	cmd.Env = append(os.Environ(), "COCOON_CKPT_LOG="+logPath, "COCOON_CKPT_DONE="+done)
	// A process group of its own: a signal to the orchestrator's group
	// (Ctrl-C) does not cut the image short.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start runsc checkpoint: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, checkpointPID), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return fmt.Errorf("record checkpoint pid: %w", err)
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
	os.Remove(filepath.Join(dir, checkpointPID))
	if _, serr := os.Stat(done); err == nil && serr != nil {
		err = serr
	}
	if err != nil {
		out, _ := os.ReadFile(logPath)
		return fmt.Errorf("runsc checkpoint: %w: %s", err, lastLines(out, 5))
	}
	os.Remove(done)
	os.Remove(logPath)
	return nil
}

// RecoverPause implements runtime.PauseRecoverer. It waits for a runsc
// checkpoint still running into dir (its shell's pid is in
// dir/checkpoint.pid); a complete image (dir/checkpoint.done) finishes the
// pause, anything else is discarded and the container, if it still runs,
// is re-adopted.
func (d *Driver) RecoverPause(ctx context.Context, spec runtime.Spec, dir string) (runtime.Instance, bool, error) {
	if err := waitCheckpoint(ctx, dir); err != nil {
		return nil, false, fmt.Errorf("gvisor: recover pause of %s: %w", spec.ID, err)
	}
	if _, err := os.Stat(filepath.Join(dir, checkpointDone)); err == nil {
		if err := writeMeta(dir, d); err != nil {
			return nil, false, fmt.Errorf("gvisor: recover pause of %s: %w", spec.ID, err)
		}
		os.Remove(filepath.Join(dir, checkpointDone))
		os.Remove(filepath.Join(dir, checkpointLog))
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

// waitCheckpoint waits until the checkpoint shell recorded in dir, if it
// still runs, exits.
func waitCheckpoint(ctx context.Context, dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, checkpointPID))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return nil // torn pid file: the shell had not started
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil // gone
	}
	defer unix.Close(fd)
	// The pidfd pins the process; make sure it is our shell, not a
	// process that reused the pid.
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), checkpointDir(dir)) {
		return nil
	}
	// A pidfd turns readable when its process exits.
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("wait for runsc checkpoint %d: %w", pid, err)
		}
		n, err := unix.Poll(fds, 100)
		if n > 0 {
			return nil
		}
		if err != nil && err != unix.EINTR {
			return fmt.Errorf("wait for runsc checkpoint %d: %w", pid, err)
		}
	}
}
