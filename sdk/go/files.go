package cocoon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Filesystem reads and writes a sandbox's files (Sandbox.Files). Paths
// are absolute or relative to the user's home.
type Filesystem struct{ s *Sandbox }

// FileType is the type of an entry.
type FileType string

// The types of entries.
const (
	FileTypeFile      FileType = "file"
	FileTypeDirectory FileType = "dir"
	FileTypeSymlink   FileType = "symlink"
)

// EntryInfo describes a file or directory.
type EntryInfo struct {
	Name          string            `json:"name"`
	Type          FileType          `json:"type"`
	Path          string            `json:"path"`
	Size          int64             `json:"size"`
	Mode          uint32            `json:"mode"`
	Permissions   string            `json:"permissions"`
	Owner         string            `json:"owner"`
	Group         string            `json:"group"`
	ModifiedTime  time.Time         `json:"modifiedTime"`
	SymlinkTarget string            `json:"symlinkTarget,omitempty"`
	Metadata      map[string]string `json:"metadata,omitempty"`
}

// entryJSON is envd's EntryInfo in proto3 JSON.
type entryJSON struct {
	Name          string            `json:"name"`
	Type          string            `json:"type"`
	Path          string            `json:"path"`
	Size          json.Number       `json:"size"`
	Mode          uint32            `json:"mode"`
	Permissions   string            `json:"permissions"`
	Owner         string            `json:"owner"`
	Group         string            `json:"group"`
	ModifiedTime  *time.Time        `json:"modifiedTime"`
	SymlinkTarget string            `json:"symlinkTarget"`
	Metadata      map[string]string `json:"metadata"`
}

func (e entryJSON) info() EntryInfo {
	i := EntryInfo{Name: e.Name, Path: e.Path, Mode: e.Mode, Permissions: e.Permissions, Owner: e.Owner,
		Group: e.Group, SymlinkTarget: e.SymlinkTarget, Metadata: e.Metadata}
	i.Size, _ = strconv.ParseInt(e.Size.String(), 10, 64)
	if e.ModifiedTime != nil {
		i.ModifiedTime = *e.ModifiedTime
	}
	switch e.Type {
	case "FILE_TYPE_FILE":
		i.Type = FileTypeFile
	case "FILE_TYPE_DIRECTORY":
		i.Type = FileTypeDirectory
	case "FILE_TYPE_SYMLINK":
		i.Type = FileTypeSymlink
	}
	return i
}

// FileOptions are options of the file calls.
type FileOptions struct {
	// User reads and writes as this user (default: the sandbox's default
	// user).
	User string
}

func user(opts []FileOptions) string {
	if len(opts) > 0 {
		return opts[0].User
	}
	return ""
}

// Read returns the content of the file at path.
func (f *Filesystem) Read(ctx context.Context, path string, opts ...FileOptions) ([]byte, error) {
	r, err := f.ReadStream(ctx, path, opts...)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read %s in sandbox %s: %w", path, f.s.ID, err)
	}
	return b, nil
}

// ReadStream returns the content of the file at path as a stream; the
// caller closes it. ctx bounds the whole read.
func (f *Filesystem) ReadStream(ctx context.Context, path string, opts ...FileOptions) (io.ReadCloser, error) {
	r := f.s.envdRequest(http.MethodGet, "/files", f.query(path, user(opts)), user(opts))
	r.idempotent, r.stream = true, true
	resp, err := f.s.client.do(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("read %s in sandbox %s: %w", path, f.s.ID, err)
	}
	return resp.Body, nil
}

func (f *Filesystem) query(path, user string) url.Values {
	q := url.Values{}
	if path != "" {
		q.Set("path", path)
	}
	if user != "" {
		q.Set("username", user)
	}
	return q
}

// writeReply is envd's answer to an upload.
type writeReply []struct {
	Path string `json:"path"`
	Name string `json:"name"`
	Type string `json:"type"`
}

// Write writes data to the file at path, making its directories; it
// replaces what was there.
func (f *Filesystem) Write(ctx context.Context, path string, data []byte, opts ...FileOptions) (*EntryInfo, error) {
	r := f.s.envdRequest(http.MethodPost, "/files", f.query(path, user(opts)), user(opts))
	r.header.Set("Content-Type", "application/octet-stream")
	r.body = data
	r.idempotent = true // the same bytes to the same path
	return f.upload(ctx, r, path)
}

// WriteStream writes what src yields to the file at path.
func (f *Filesystem) WriteStream(ctx context.Context, path string, src io.Reader, opts ...FileOptions) (*EntryInfo, error) {
	r := f.s.envdRequest(http.MethodPost, "/files", f.query(path, user(opts)), user(opts))
	base := r
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, src)
	if err != nil {
		return nil, err
	}
	req.Header = r.header
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("User-Agent", userAgent)
	resp, err := f.s.client.cfg.HTTPClient.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("write %s in sandbox %s: %w", path, f.s.ID, &ConnectionError{URL: base.base, Setting: base.setting, Err: err})
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return nil, fmt.Errorf("write %s in sandbox %s: %w", path, f.s.ID, newHTTPError(resp.StatusCode, resp.Header, b))
	}
	var w writeReply
	if err := json.NewDecoder(resp.Body).Decode(&w); err != nil || len(w) == 0 {
		return nil, fmt.Errorf("write %s in sandbox %s: unexpected reply (%v)", path, f.s.ID, err)
	}
	return &EntryInfo{Name: w[0].Name, Path: w[0].Path, Type: FileTypeFile}, nil
}

func (f *Filesystem) upload(ctx context.Context, r request, what string) (*EntryInfo, error) {
	resp, err := f.s.client.do(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("write %s in sandbox %s: %w", what, f.s.ID, err)
	}
	defer resp.Body.Close()
	var w writeReply
	if err := json.NewDecoder(resp.Body).Decode(&w); err != nil || len(w) == 0 {
		return nil, fmt.Errorf("write %s in sandbox %s: unexpected reply (%v)", what, f.s.ID, err)
	}
	return &EntryInfo{Name: w[0].Name, Path: w[0].Path, Type: FileTypeFile}, nil
}

// WriteEntry is one file of WriteMany.
type WriteEntry struct {
	Path string
	Data []byte
}

// WriteMany writes several files in one request.
func (f *Filesystem) WriteMany(ctx context.Context, files []WriteEntry, opts ...FileOptions) ([]EntryInfo, error) {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for _, e := range files {
		h := textproto.MIMEHeader{}
		// The file name is the full target path (envd reads it raw).
		h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="file"; filename=%q`, e.Path))
		h.Set("Content-Type", "application/octet-stream")
		w, err := mw.CreatePart(h)
		if err != nil {
			return nil, err
		}
		w.Write(e.Data)
	}
	mw.Close()
	r := f.s.envdRequest(http.MethodPost, "/files", f.query("", user(opts)), user(opts))
	r.header.Set("Content-Type", mw.FormDataContentType())
	r.body = body.Bytes()
	r.idempotent = true
	resp, err := f.s.client.do(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("write %d files in sandbox %s: %w", len(files), f.s.ID, err)
	}
	defer resp.Body.Close()
	var w writeReply
	if err := json.NewDecoder(resp.Body).Decode(&w); err != nil {
		return nil, fmt.Errorf("write %d files in sandbox %s: decode reply: %w", len(files), f.s.ID, err)
	}
	out := make([]EntryInfo, len(w))
	for i, e := range w {
		out[i] = EntryInfo{Name: e.Name, Path: e.Path, Type: FileTypeFile}
	}
	return out, nil
}

// List lists directory path; depth > 1 descends that many levels (0
// means 1).
func (f *Filesystem) List(ctx context.Context, path string, depth int, opts ...FileOptions) ([]EntryInfo, error) {
	if depth < 1 {
		depth = 1
	}
	var r struct {
		Entries []entryJSON `json:"entries"`
	}
	req := map[string]any{"path": path, "depth": depth}
	if err := f.s.unary(ctx, "filesystem.Filesystem/ListDir", user(opts), req, &r, true); err != nil {
		return nil, fmt.Errorf("list %s in sandbox %s: %w", path, f.s.ID, err)
	}
	out := make([]EntryInfo, len(r.Entries))
	for i, e := range r.Entries {
		out[i] = e.info()
	}
	return out, nil
}

// Stat describes path; a NotFoundError when there is nothing.
func (f *Filesystem) Stat(ctx context.Context, path string, opts ...FileOptions) (*EntryInfo, error) {
	var r struct {
		Entry entryJSON `json:"entry"`
	}
	if err := f.s.unary(ctx, "filesystem.Filesystem/Stat", user(opts), map[string]string{"path": path}, &r, true); err != nil {
		return nil, fmt.Errorf("stat %s in sandbox %s: %w", path, f.s.ID, err)
	}
	i := r.Entry.info()
	return &i, nil
}

// Exists says whether path exists.
func (f *Filesystem) Exists(ctx context.Context, path string, opts ...FileOptions) (bool, error) {
	_, err := f.Stat(ctx, path, opts...)
	var nf *NotFoundError
	if errors.As(err, &nf) {
		return false, nil
	}
	return err == nil, err
}

// MakeDir makes directory path and its parents; false when it existed.
func (f *Filesystem) MakeDir(ctx context.Context, path string, opts ...FileOptions) (bool, error) {
	err := f.s.unary(ctx, "filesystem.Filesystem/MakeDir", user(opts), map[string]string{"path": path}, nil, false)
	var ae *APIError
	if errors.As(err, &ae) && ae.Code == "already_exists" {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("make dir %s in sandbox %s: %w", path, f.s.ID, err)
	}
	return true, nil
}

// Rename moves oldPath to newPath.
func (f *Filesystem) Rename(ctx context.Context, oldPath, newPath string, opts ...FileOptions) (*EntryInfo, error) {
	var r struct {
		Entry entryJSON `json:"entry"`
	}
	req := map[string]string{"source": oldPath, "destination": newPath}
	if err := f.s.unary(ctx, "filesystem.Filesystem/Move", user(opts), req, &r, false); err != nil {
		return nil, fmt.Errorf("rename %s to %s in sandbox %s: %w", oldPath, newPath, f.s.ID, err)
	}
	i := r.Entry.info()
	return &i, nil
}

// Remove removes path (a directory with its content).
func (f *Filesystem) Remove(ctx context.Context, path string, opts ...FileOptions) error {
	if err := f.s.unary(ctx, "filesystem.Filesystem/Remove", user(opts), map[string]string{"path": path}, nil, true); err != nil {
		return fmt.Errorf("remove %s in sandbox %s: %w", path, f.s.ID, err)
	}
	return nil
}

// EventType is what happened to a watched path.
type EventType string

// The types of filesystem events.
const (
	EventCreate EventType = "create"
	EventWrite  EventType = "write"
	EventRemove EventType = "remove"
	EventRename EventType = "rename"
	EventChmod  EventType = "chmod"
)

// FilesystemEvent is one change under a watched directory.
type FilesystemEvent struct {
	// Name is the path relative to the watched directory.
	Name string
	Type EventType
}

// WatchOptions are the options of Filesystem.Watch.
type WatchOptions struct {
	// Recursive watches subdirectories too.
	Recursive bool
	User      string
}

// Watcher delivers the events of a watched directory.
type Watcher struct {
	// Events is closed when the watch ends (Stop, ctx, or an error: Err).
	Events <-chan FilesystemEvent

	st     *stream
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// Watch watches directory path until ctx ends or Stop. The watch is in
// place when Watch returns: changes made after it are delivered.
func (f *Filesystem) Watch(ctx context.Context, path string, opts WatchOptions) (*Watcher, error) {
	sctx, cancel := context.WithCancel(ctx)
	req := map[string]any{"path": path, "recursive": opts.Recursive}
	st, err := f.s.openStream(sctx, "filesystem.Filesystem/WatchDir", opts.User, req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("watch %s in sandbox %s: %w", path, f.s.ID, ctxErr(ctx, err))
	}
	var first struct {
		Start *struct{} `json:"start"`
	}
	if err := st.next(&first); err != nil || first.Start == nil {
		st.close()
		cancel()
		if err == nil {
			err = errors.New("stream did not begin with a start event")
		}
		return nil, fmt.Errorf("watch %s in sandbox %s: %w", path, f.s.ID, ctxErr(ctx, err))
	}
	ch := make(chan FilesystemEvent, 64)
	w := &Watcher{Events: ch, st: st, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer close(ch)
		defer st.close()
		for {
			var m struct {
				Filesystem *struct {
					Name string `json:"name"`
					Type string `json:"type"`
				} `json:"filesystem"`
			}
			if err := st.next(&m); err != nil {
				if err != io.EOF && sctx.Err() == nil {
					w.err = f.s.whyBroken(err)
				}
				return
			}
			if m.Filesystem == nil {
				continue // keepalive
			}
			ev := FilesystemEvent{Name: m.Filesystem.Name,
				Type: EventType(strings.ToLower(strings.TrimPrefix(m.Filesystem.Type, "EVENT_TYPE_")))}
			select {
			case ch <- ev:
			case <-sctx.Done():
				return
			}
		}
	}()
	return w, nil
}

// Stop ends the watch; Events is closed after it returns.
func (w *Watcher) Stop() {
	w.cancel()
	<-w.done
}

// Err is why the watch ended, nil after Stop or ctx's end.
func (w *Watcher) Err() error {
	select {
	case <-w.done:
		return w.err
	default:
		return nil
	}
}
