package oci

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/cocoon-run/cocoon/internal/template/guest"
	"github.com/cocoon-run/cocoon/internal/template/rootfs"
)

// childEnv carries a job of ExtractAs or PrepareAs to the child process; a
// process started with it set does the job and exits before main runs (see
// init).
const childEnv = "COCOON_OCI_EXTRACT_AS"

// childDir is the target directory as the child sees it: the descriptor
// its parent passed, so that the child needs no search permission on the
// (0700, host-root) directories above it.
const childDir = "/proc/self/fd/3"

func init() {
	if job, ok := os.LookupEnv(childEnv); ok {
		os.Exit(child(job))
	}
}

// childJob is what ExtractAs tells its child: the options of Extract that
// are data.
type childJob struct {
	// Op is "extract" (stdin into the directory) or "prepare" (Prepare
	// the directory with envd, then tini, from descriptors 4 on).
	Op          string `json:"op"`
	Envd        bool   `json:"envd,omitempty"`
	Tini        bool   `json:"tini,omitempty"`
	Whiteouts   bool   `json:"whiteouts,omitempty"`
	StrictLinks bool   `json:"strictLinks,omitempty"`
	MaxBytes    int64  `json:"maxBytes,omitempty"`
	Counted     int64  `json:"counted,omitempty"`
}

// childReport is one line the child writes on its stdout: an entry left
// out, or (Done) its result.
type childReport struct {
	Skipped string `json:"skipped,omitempty"`
	Why     string `json:"why,omitempty"`
	Done    bool   `json:"done,omitempty"`
	Counted int64  `json:"counted,omitempty"`
	Err     string `json:"err,omitempty"`
	// Kind names the sentinel Err wraps: "unsafe" or "too large".
	Kind string `json:"kind,omitempty"`
}

// ExtractAs is Extract run without privilege on the host: a child process
// (this binary, re-executed) is root of a user namespace of its own that
// maps the guest's ids 0..guest.IDs-1 onto hostID..hostID+guest.IDs-1
// (guest.TreeHostID for the node's trees), and unpacks r into dir, which it
// is given as a descriptor. Files are owned by the shifted ids on the host,
// so a setuid-root file of the stream is setuid to an id no host process
// runs as; the child can create no device node, change nothing the host's
// ids own (a link the stream planted that leads out of dir reaches only
// what any unprivileged user could write), and holds no capability on the
// host. dir itself ends up owned by hostID: the guest's "/" is root's,
// which is how guest.TreeBase recognizes such a tree.
//
// Measured: a child starts in ≈ 10 ms; the stream is copied once more
// through a pipe (see docs/decisions.md for the build time).
func ExtractAs(ctx context.Context, r io.Reader, dir string, hostID uint32, opts ExtractOptions) error {
	job := childJob{Op: "extract", Whiteouts: opts.Whiteouts, StrictLinks: opts.StrictLinks, MaxBytes: opts.MaxBytes}
	if opts.Counted != nil {
		job.Counted = *opts.Counted
	}
	done, err := runChild(ctx, dir, hostID, job, r, nil, opts.Skipped)
	if err != nil {
		return fmt.Errorf("extract: %w", err)
	}
	if opts.Counted != nil {
		*opts.Counted = done.Counted
	}
	return nil
}

// PrepareAs is Prepare run in the same kind of child as ExtractAs, over a
// tree ExtractAs made: the image's tree is the tenant's, and Prepare
// writes, removes and runs things in it (a link such as usr/share ->
// /usr/share made the host's files the target when Prepare ran as root).
// g's files are handed to the child as descriptors.
func PrepareAs(ctx context.Context, dir string, hostID uint32, g rootfs.Guest) error {
	var files []*os.File
	for _, p := range []string{g.EnvdPath, g.TiniPath} {
		if p == "" {
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
		defer f.Close()
		files = append(files, f)
	}
	job := childJob{Op: "prepare", Envd: g.EnvdPath != "", Tini: g.TiniPath != ""}
	if _, err := runChild(ctx, dir, hostID, job, nil, files, nil); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	return nil
}

// runChild runs job in a child process of this binary, root of a user
// namespace that maps 0..guest.IDs-1 onto hostID.., with dir as its
// descriptor 3 (made hostID's first), stdin (may be nil) on its standard
// input and files from descriptor 4 on. It returns the child's final
// report, or its error (with the sentinel it matched).
func runChild(ctx context.Context, dir string, hostID uint32, job childJob, stdin io.Reader, files []*os.File, skipped func(name, why string)) (*childReport, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.Lchown(dir, int(hostID), int(hostID)); err != nil {
		return nil, err
	}
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	b, err := json.Marshal(job)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/proc/self/exe")
	cmd.Args = []string{"cocoon-" + job.Op}
	cmd.Env = []string{childEnv + "=" + string(b), "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Dir = "/" // the parent's working directory may be out of the child's reach
	cmd.ExtraFiles = append([]*os.File{d}, files...)
	var stderr tailWriter
	cmd.Stderr = &stderr
	cmd.SysProcAttr = guest.TreeUserNS(hostID)
	var in io.WriteCloser
	if stdin != nil {
		if in, err = cmd.StdinPipe(); err != nil {
			return nil, err
		}
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start unprivileged child: %w", err)
	}
	// The child reads the whole stream when it succeeds (tar pads its end
	// with zeros); when it fails it stops reading, and so does the copy.
	copied := make(chan error, 1)
	if in != nil {
		go func() {
			_, err := io.Copy(in, stdin)
			in.Close()
			copied <- err
		}()
	} else {
		copied <- nil
	}
	var done *childReport
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var rep childReport
		if err := json.Unmarshal(sc.Bytes(), &rep); err != nil {
			continue
		}
		if rep.Done {
			done = &rep
			continue
		}
		if skipped != nil {
			skipped(rep.Skipped, rep.Why)
		}
	}
	werr := cmd.Wait()
	if done == nil {
		return nil, fmt.Errorf("unprivileged child: %v: %s", werr, stderr.String())
	}
	if done.Err != "" {
		var is error
		switch done.Kind {
		case "unsafe":
			is = ErrUnsafe
		case "too large":
			is = ErrTooLarge
		}
		return nil, &childError{msg: done.Err, is: is}
	}
	if err := <-copied; err != nil {
		return nil, fmt.Errorf("read archive: %w", err)
	}
	// The guest's "/" is root's (a "./" entry may have said otherwise).
	if err := os.Lchown(dir, int(hostID), int(hostID)); err != nil {
		return nil, err
	}
	return done, nil
}

// childError is an error of the child, wrapping the sentinel it matched.
type childError struct {
	msg string
	is  error
}

func (e *childError) Error() string { return e.msg }
func (e *childError) Unwrap() error { return e.is }

// child is the child's side of runChild: it runs its job on childDir and
// reports on its stdout.
func child(jobJSON string) int {
	out := json.NewEncoder(os.Stdout)
	var job childJob
	if err := json.Unmarshal([]byte(jobJSON), &job); err != nil {
		fmt.Fprintln(os.Stderr, "bad job:", err)
		return 2
	}
	rep := childReport{Done: true}
	var err error
	switch job.Op {
	case "extract":
		counted := job.Counted
		err = Extract(os.Stdin, childDir, ExtractOptions{
			Whiteouts: job.Whiteouts, StrictLinks: job.StrictLinks, MaxBytes: job.MaxBytes, Counted: &counted,
			Skipped:  func(name, why string) { _ = out.Encode(childReport{Skipped: name, Why: why}) },
			inTreeNS: true,
		})
		if err == nil {
			_, err = io.Copy(io.Discard, os.Stdin)
		}
		rep.Counted = counted
	case "prepare":
		var g rootfs.Guest
		fd := 4
		if job.Envd {
			g.EnvdPath = fmt.Sprintf("/proc/self/fd/%d", fd)
			fd++
		}
		if job.Tini {
			g.TiniPath = fmt.Sprintf("/proc/self/fd/%d", fd)
		}
		err = Prepare(context.Background(), childDir, g)
	default:
		err = fmt.Errorf("unknown job %q", job.Op)
	}
	if err != nil {
		rep.Err = err.Error()
		switch {
		case errors.Is(err, ErrUnsafe):
			rep.Kind = "unsafe"
		case errors.Is(err, ErrTooLarge):
			rep.Kind = "too large"
		}
	}
	if err := out.Encode(rep); err != nil {
		return 1
	}
	return 0
}

// tailWriter keeps the last 4 KiB written to it.
type tailWriter struct{ b []byte }

func (w *tailWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	if len(w.b) > 4096 {
		w.b = w.b[len(w.b)-4096:]
	}
	return len(p), nil
}

func (w *tailWriter) String() string { return strings.TrimSpace(string(w.b)) }
