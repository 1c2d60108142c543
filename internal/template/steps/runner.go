package steps

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/cocoon-run/cocoon/internal/template/oci"
)

// Logger receives a build's log lines; step is the 1-based index of the
// step that produced it.
type Logger func(step int, level, msg string)

// StepError is a step that failed: its index, a description and the cause
// (an *ExitError for a failing command).
type StepError struct {
	Step int
	What string
	Err  error
}

func (e *StepError) Error() string {
	return fmt.Sprintf("step %d (%s) failed: %v", e.Step, e.What, e.Err)
}
func (e *StepError) Unwrap() error { return e.Err }

// Runner runs a Spec's steps in a build sandbox.
type Runner struct {
	Envd *Envd
	Log  Logger
	// Archive opens the uploaded COPY archive with this hash (a tar or a
	// tar.gz). It may be called more than once per hash.
	Archive func(ctx context.Context, hash string) (io.ReadCloser, error)
	// MaxCopyBytes caps the unpacked size of one COPY archive (0: none).
	MaxCopyBytes int64

	shell string
}

// Run runs every step in order and returns the final state. The first
// failing step stops the build with a *StepError.
func (r *Runner) Run(ctx context.Context, s Spec) (State, error) {
	if err := s.Validate(); err != nil {
		return State{}, err
	}
	r.shell = "/bin/bash"
	if err := r.Envd.Run(ctx, Cmd{Path: "/bin/bash", Args: []string{"-c", "true"}, User: "root"}, nil, nil); err != nil {
		r.shell = "/bin/sh"
	}
	var st State
	for i, step := range s.Steps {
		n := i + 1
		what := describe(step)
		r.Log(n, "info", fmt.Sprintf("[%d/%d] %s", n, len(s.Steps), what))
		var err error
		switch step.Type {
		case Run:
			user := ""
			if len(step.Args) > 1 {
				user = step.Args[1]
			}
			err = r.run(ctx, n, r.cmd(step.Args[0], st, user))
		case Copy:
			err = r.copy(ctx, n, step, st)
		case Workdir:
			next := st
			next.Apply(step)
			q := quote(next.Workdir)
			err = r.run(ctx, n, r.cmd(fmt.Sprintf("[ -d %s ] || { mkdir -p %s && chown %s: %s; }", q, q, quote(st.user()), q), st, "root"))
		case User:
			err = r.run(ctx, n, r.cmd("id -u "+quote(step.Args[0])+" >/dev/null", st, "root"))
			if err != nil {
				err = fmt.Errorf("user %q does not exist in the image: %w", step.Args[0], err)
			}
		}
		if err != nil {
			return st, &StepError{Step: n, What: what, Err: err}
		}
		st.Apply(step)
	}
	return st, nil
}

func (r *Runner) cmd(script string, st State, user string) Cmd {
	c := Shell(script, st, user)
	if r.shell != "/bin/bash" {
		c.Path, c.Args = r.shell, []string{"-c", script}
	}
	if user == "root" && c.Dir == "" {
		c.Dir = "/"
	}
	return c
}

// run runs c, logging its output lines as the step's.
func (r *Runner) run(ctx context.Context, step int, c Cmd) error {
	out := &lineWriter{emit: func(line string) { r.Log(step, "info", line) }}
	errw := &lineWriter{emit: func(line string) { r.Log(step, "info", line) }}
	err := r.Envd.Run(ctx, c, out, errw)
	out.Flush()
	errw.Flush()
	return err
}

func (r *Runner) copy(ctx context.Context, n int, step Step, st State) error {
	src, _ := cleanSource(step.Args[0])
	dest := st.resolve(step.Args[1])
	owner := st.user()
	if len(step.Args) > 2 && step.Args[2] != "" {
		owner = step.Args[2]
	}
	mode := ""
	if len(step.Args) > 3 && step.Args[3] != "" {
		mode = step.Args[3]
		if strings.Trim(mode, "01234567") != "" {
			return fmt.Errorf("bad mode %q", mode)
		}
	}
	// Refuse unsafe archives before anything reaches the sandbox.
	if err := r.withTar(ctx, step.FilesHash, func(tr io.Reader) error {
		_, err := oci.CheckArchive(tr, r.MaxCopyBytes)
		return err
	}); err != nil {
		return err
	}
	archive := fmt.Sprintf("/tmp/.cocoon-copy-%d.tar", n)
	if err := r.withTar(ctx, step.FilesHash, func(tr io.Reader) error {
		return r.Envd.Upload(ctx, archive, "root", tr)
	}); err != nil {
		return err
	}
	pattern := quote(src)
	if strings.ContainsAny(src, "*?[") {
		pattern = src // let the shell expand the glob; the archive was checked
	}
	var b strings.Builder
	fmt.Fprintf(&b, "set -e\na=%s\nd=$(mktemp -d)\ntar -xpf \"$a\" -C \"$d\"\nchown -R %s: \"$d\"\n", quote(archive), quote(owner))
	if mode != "" {
		fmt.Fprintf(&b, "find \"$d\" -mindepth 1 ! -type l -exec chmod %s {} +\n", mode)
	}
	// Directories COPY creates belong to the owner, as the files do.
	fmt.Fprintf(&b, "mk() { p=\"$1\"; top=; while [ ! -e \"$p\" ]; do top=\"$p\"; p=$(dirname \"$p\"); done; mkdir -p \"$1\"; [ -z \"$top\" ] || chown -R %s: \"$top\"; }\n", quote(owner))
	fmt.Fprintf(&b, `dest=%s
cd "$d"
found=
for s in %s; do
  [ -e "$s" ] || [ -L "$s" ] || continue
  found=1
  if [ -d "$s" ] && [ ! -L "$s" ]; then mk "$dest"; cp -a "$s"/. "$dest"/
  elif [ "${dest%%/}" != "$dest" ] || [ -d "$dest" ]; then mk "$dest"; cp -a "$s" "$dest"/
  else mk "$(dirname "$dest")"; cp -a "$s" "$dest"; fi
done
cd /
rm -rf "$d" "$a"
[ -n "$found" ] || { echo "COPY: %s is not in the uploaded files" >&2; exit 1; }
`, quote(dest), pattern, strings.ReplaceAll(src, "\"", ""))
	return r.run(ctx, n, r.cmd(b.String(), st, "root"))
}

// withTar opens the archive hash, unwrapping gzip, and passes the tar
// stream to fn.
func (r *Runner) withTar(ctx context.Context, hash string, fn func(io.Reader) error) error {
	rc, err := r.Archive(ctx, hash)
	if err != nil {
		return fmt.Errorf("files %s: %w", hash, err)
	}
	defer rc.Close()
	tr, err := Untar(rc)
	if err != nil {
		return fmt.Errorf("files %s: %w", hash, err)
	}
	return fn(tr)
}

// Untar returns the tar stream inside r, gunzipping it if it is gzipped.
func Untar(r io.Reader) (io.Reader, error) {
	br := bufio.NewReader(r)
	magic, err := br.Peek(2)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		return gzip.NewReader(br)
	}
	return br, nil
}

func describe(s Step) string {
	switch s.Type {
	case Run:
		return "RUN " + s.Args[0]
	case Copy:
		return "COPY " + s.Args[0] + " " + s.Args[1]
	case Env:
		var kv []string
		for i := 0; i+1 < len(s.Args); i += 2 {
			kv = append(kv, s.Args[i]+"="+s.Args[i+1])
		}
		return "ENV " + strings.Join(kv, " ")
	}
	return s.Type + " " + strings.Join(s.Args, " ")
}

// quote quotes s for a POSIX shell.
func quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// lineWriter splits a byte stream into lines.
type lineWriter struct {
	buf  bytes.Buffer
	emit func(string)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf.Write(p)
	for {
		i := bytes.IndexByte(w.buf.Bytes(), '\n')
		if i < 0 {
			break
		}
		line := string(w.buf.Next(i + 1))
		w.emit(strings.TrimRight(line, "\r\n"))
	}
	if w.buf.Len() > 8192 {
		w.Flush()
	}
	return len(p), nil
}

// Flush emits a trailing partial line.
func (w *lineWriter) Flush() {
	if w.buf.Len() > 0 {
		w.emit(strings.TrimRight(w.buf.String(), "\r\n"))
		w.buf.Reset()
	}
}
