package filesystem

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	fspb "github.com/cocoon-run/cocoon/api/gen/filesystem"
	"github.com/cocoon-run/cocoon/api/gen/filesystem/filesystemconnect"
	"github.com/cocoon-run/cocoon/internal/envd/identity"
	"github.com/cocoon-run/cocoon/internal/envd/session"
)

type fixture struct {
	url    string
	client filesystemconnect.FilesystemClient // JSON codec, as the SDK
	binary filesystemconnect.FilesystemClient // protobuf codec
	svc    *Service
}

func newFixture(t *testing.T, opts ...Option) *fixture {
	t.Helper()
	svc := New(&session.Session{}, opts...)
	mux := http.NewServeMux()
	mux.Handle(svc.Handler())
	srv := httptest.NewServer(mux)
	t.Cleanup(func() { svc.Close(); srv.Close() })
	return &fixture{
		url:    srv.URL,
		client: filesystemconnect.NewFilesystemClient(srv.Client(), srv.URL, connect.WithProtoJSON()),
		binary: filesystemconnect.NewFilesystemClient(srv.Client(), srv.URL),
		svc:    svc,
	}
}

func req[T any](msg *T, user string) *connect.Request[T] {
	r := connect.NewRequest(msg)
	if user != "" {
		r.Header().Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":")))
	}
	return r
}

func writeFile(t *testing.T, p, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestStat(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "a.txt")
	writeFile(t, file, "hello")
	if err := os.Symlink(file, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	cur, err := identity.Current()
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		path     string
		wantCode connect.Code
		wantType fspb.FileType
		wantPerm string
		wantSize int64
	}{
		{"file", file, 0, fspb.FileType_FILE_TYPE_FILE, "-rw-r--r--", 5},
		{"dir", dir, 0, fspb.FileType_FILE_TYPE_DIRECTORY, "drwxr-x---", -1},
		{"symlink", filepath.Join(dir, "link"), 0, fspb.FileType_FILE_TYPE_SYMLINK, "Lrwxrwxrwx", -1},
		{"missing", filepath.Join(dir, "nope"), connect.CodeNotFound, 0, "", 0},
		{"under a file", filepath.Join(file, "x"), connect.CodeInvalidArgument, 0, "", 0},
	}
	for _, tt := range tests {
		for codec, c := range map[string]filesystemconnect.FilesystemClient{"json": f.client, "binary": f.binary} {
			t.Run(tt.name+"/"+codec, func(t *testing.T) {
				res, err := c.Stat(context.Background(), req(&fspb.StatRequest{Path: tt.path}, ""))
				if got := connect.CodeOf(err); tt.wantCode != 0 || err != nil {
					if got != tt.wantCode {
						t.Fatalf("code = %v (%v), want %v", got, err, tt.wantCode)
					}
					return
				}
				e := res.Msg.GetEntry()
				if e.GetType() != tt.wantType || e.GetPermissions() != tt.wantPerm || e.GetPath() != tt.path || e.GetName() != filepath.Base(tt.path) {
					t.Errorf("entry = %v", e)
				}
				if tt.wantSize >= 0 && e.GetSize() != tt.wantSize {
					t.Errorf("size = %d, want %d", e.GetSize(), tt.wantSize)
				}
				if e.GetOwner() != cur.Name || e.GetGroup() == "" || e.GetModifiedTime() == nil {
					t.Errorf("owner/group/mtime = %q %q %v, want owner %q", e.GetOwner(), e.GetGroup(), e.GetModifiedTime(), cur.Name)
				}
				if tt.wantType == fspb.FileType_FILE_TYPE_SYMLINK && e.GetSymlinkTarget() != file {
					t.Errorf("symlink target = %q, want %q", e.GetSymlinkTarget(), file)
				}
				if tt.wantType == fspb.FileType_FILE_TYPE_FILE && e.GetMode() != 0o644 {
					t.Errorf("mode = %o, want 644", e.GetMode())
				}
			})
		}
	}
}

func TestStatRelativeToHome(t *testing.T) {
	f := newFixture(t)
	cur, err := identity.Current()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(cur.Home, "fs-test-")
	if err != nil {
		t.Skipf("home %s not writable: %v", cur.Home, err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	writeFile(t, filepath.Join(dir, "rel"), "x")
	rel := filepath.Join(filepath.Base(dir), "rel")
	res, err := f.client.Stat(context.Background(), req(&fspb.StatRequest{Path: rel}, cur.Name))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := res.Msg.GetEntry().GetPath(), filepath.Join(dir, "rel"); got != want {
		t.Errorf("path = %q, want %q", got, want)
	}
}

func TestUnknownUser(t *testing.T) {
	f := newFixture(t)
	_, err := f.client.Stat(context.Background(), req(&fspb.StatRequest{Path: "/"}, "no-such-user-xyz"))
	if got := connect.CodeOf(err); got != connect.CodeInvalidArgument {
		t.Fatalf("code = %v, want invalid_argument", got)
	}
}

func TestMakeDir(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	writeFile(t, filepath.Join(dir, "file"), "x")
	user := ""
	var wantUID uint32 = uint32(os.Getuid())
	if os.Getuid() == 0 {
		if u, err := identity.Lookup("nobody"); err == nil {
			user, wantUID = "nobody", u.UID
		}
	}

	nested := filepath.Join(dir, "a", "b", "c")
	res, err := f.client.MakeDir(context.Background(), req(&fspb.MakeDirRequest{Path: nested}, user))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.GetEntry().GetType() != fspb.FileType_FILE_TYPE_DIRECTORY || res.Msg.GetEntry().GetPath() != nested {
		t.Errorf("entry = %v", res.Msg.GetEntry())
	}
	for _, p := range []string{filepath.Join(dir, "a"), filepath.Join(dir, "a", "b"), nested} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Sys().(*syscall.Stat_t).Uid; got != wantUID {
			t.Errorf("%s uid = %d, want %d", p, got, wantUID)
		}
	}

	tests := []struct {
		name string
		path string
		want connect.Code
	}{
		{"existing dir", nested, connect.CodeAlreadyExists},
		{"existing file", filepath.Join(dir, "file"), connect.CodeAlreadyExists},
		{"under a file", filepath.Join(dir, "file", "sub"), connect.CodeInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.client.MakeDir(context.Background(), req(&fspb.MakeDirRequest{Path: tt.path}, ""))
			if got := connect.CodeOf(err); got != tt.want {
				t.Fatalf("code = %v (%v), want %v", got, err, tt.want)
			}
		})
	}
}

func TestMove(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	writeFile(t, src, "data")
	dst := filepath.Join(dir, "new", "parent", "dst")

	res, err := f.client.Move(context.Background(), req(&fspb.MoveRequest{Source: src, Destination: dst}, ""))
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Msg.GetEntry().GetPath(); got != dst {
		t.Errorf("entry path = %q, want %q", got, dst)
	}
	if b, err := os.ReadFile(dst); err != nil || string(b) != "data" {
		t.Errorf("dst = %q, %v", b, err)
	}
	if _, err := os.Lstat(src); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("src still exists: %v", err)
	}

	tests := []struct {
		name     string
		src, dst string
		want     connect.Code
	}{
		{"missing source", filepath.Join(dir, "nope"), filepath.Join(dir, "x"), connect.CodeNotFound},
		{"empty destination", dst, "", connect.CodeInvalidArgument},
		{"dir onto non-empty dir", filepath.Join(dir, "new"), dir, connect.CodeAlreadyExists},
		{"the root", "/", filepath.Join(dir, "root"), connect.CodeInvalidArgument},
		{"onto the root", dst, "/", connect.CodeInvalidArgument},
		{"into itself", filepath.Join(dir, "new"), filepath.Join(dir, "new", "inside"), connect.CodeInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.client.Move(context.Background(), req(&fspb.MoveRequest{Source: tt.src, Destination: tt.dst}, ""))
			if got := connect.CodeOf(err); got != tt.want {
				t.Fatalf("code = %v (%v), want %v", got, err, tt.want)
			}
		})
	}
}

func TestListDir(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	for _, p := range []string{"a.txt", "sub/b.txt", "sub/deeper/c.txt"} {
		writeFile(t, filepath.Join(dir, p), "x")
	}

	tests := []struct {
		name  string
		path  string
		depth uint32
		want  []string // paths relative to dir
		code  connect.Code
	}{
		{"default depth", dir, 0, []string{"a.txt", "sub"}, 0},
		{"depth 1", dir, 1, []string{"a.txt", "sub"}, 0},
		{"depth 2", dir, 2, []string{"a.txt", "sub", "sub/b.txt", "sub/deeper"}, 0},
		{"depth 5", dir, 5, []string{"a.txt", "sub", "sub/b.txt", "sub/deeper", "sub/deeper/c.txt"}, 0},
		{"file", filepath.Join(dir, "a.txt"), 1, nil, connect.CodeInvalidArgument},
		{"missing", filepath.Join(dir, "nope"), 1, nil, connect.CodeNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := f.client.ListDir(context.Background(), req(&fspb.ListDirRequest{Path: tt.path, Depth: tt.depth}, ""))
			if got := connect.CodeOf(err); tt.code != 0 || err != nil {
				if got != tt.code {
					t.Fatalf("code = %v (%v), want %v", got, err, tt.code)
				}
				return
			}
			var got []string
			for _, e := range res.Msg.GetEntries() {
				rel, _ := filepath.Rel(dir, e.GetPath())
				got = append(got, rel)
				if e.GetName() != filepath.Base(e.GetPath()) || e.GetOwner() == "" || e.GetPermissions() == "" {
					t.Errorf("incomplete entry %v", e)
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("entries = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRemove(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "tree", "a", "b"), "x")
	writeFile(t, filepath.Join(dir, "file"), "x")

	tests := []struct {
		name string
		path string
		want connect.Code
	}{
		{"recursive dir", filepath.Join(dir, "tree"), 0},
		{"file", filepath.Join(dir, "file"), 0},
		{"missing", filepath.Join(dir, "tree"), connect.CodeNotFound},
		{"root", "/", connect.CodeInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.client.Remove(context.Background(), req(&fspb.RemoveRequest{Path: tt.path}, ""))
			if got := connect.CodeOf(err); got != tt.want && !(tt.want == 0 && err == nil) {
				t.Fatalf("code = %v (%v), want %v", got, err, tt.want)
			}
			if tt.want == 0 {
				if _, err := os.Lstat(tt.path); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s still exists", tt.path)
				}
			}
		})
	}
}

func TestCode(t *testing.T) {
	tests := []struct {
		err  error
		want connect.Code
	}{
		{&fs.PathError{Op: "open", Path: "/x", Err: syscall.ENOENT}, connect.CodeNotFound},
		{&fs.PathError{Op: "mkdir", Path: "/x", Err: syscall.EEXIST}, connect.CodeAlreadyExists},
		{&fs.PathError{Op: "open", Path: "/x", Err: syscall.EACCES}, connect.CodePermissionDenied},
		{&fs.PathError{Op: "open", Path: "/x", Err: syscall.EPERM}, connect.CodePermissionDenied},
		{&fs.PathError{Op: "open", Path: "/x", Err: syscall.ENOTDIR}, connect.CodeInvalidArgument},
		{&fs.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC}, connect.CodeResourceExhausted},
		{errors.New("boom"), connect.CodeInternal},
		{connect.NewError(connect.CodeAborted, errors.New("x")), connect.CodeAborted},
	}
	for _, tt := range tests {
		if got := Code(tt.err); got != tt.want {
			t.Errorf("Code(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestPermissionDeniedAsUnprivileged(t *testing.T) {
	if os.Getuid() == 0 {
		t.Skip("root bypasses permission checks")
	}
	f := newFixture(t)
	dir := t.TempDir()
	locked := filepath.Join(dir, "locked")
	if err := os.Mkdir(locked, 0o000); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(locked, 0o755) })
	_, err := f.client.ListDir(context.Background(), req(&fspb.ListDirRequest{Path: locked}, ""))
	if got := connect.CodeOf(err); got != connect.CodePermissionDenied {
		t.Fatalf("code = %v, want permission_denied", got)
	}
}

// rawPost sends body to an RPC as the SDK would, without a Connect client.
func rawPost(t *testing.T, url, contentType string, body []byte) (int, []byte) {
	t.Helper()
	r, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	r.Header.Set("Content-Type", contentType)
	r.Header.Set("Connect-Protocol-Version", "1")
	res, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b
}

func envelope(flags byte, payload []byte, claimed int) []byte {
	b := []byte{flags, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(claimed))
	return append(b, payload...)
}

func TestMalformedRequests(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	watch := `{"path":"` + dir + `"}`
	tests := []struct {
		name, method, ctype string
		body                []byte
	}{
		{"bad json", "Stat", "application/json", []byte(`{"path":`)},
		{"wrong field type", "ListDir", "application/json", []byte(`{"depth":"deep"}`)},
		{"truncated frame", "WatchDir", "application/connect+json", envelope(0, []byte(watch)[:5], len(watch))},
		{"no frame", "WatchDir", "application/connect+json", nil},
		{"bad json in frame", "WatchDir", "application/connect+json", envelope(0, []byte(`{"path":`), 8)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := rawPost(t, f.url+"/filesystem.Filesystem/"+tt.method, tt.ctype, tt.body)
			if !bytes.Contains(body, []byte(`"invalid_argument"`)) {
				t.Fatalf("status %d body %q, want invalid_argument", status, body)
			}
		})
	}
}

// watchStream runs WatchDir and forwards its filesystem events.
func watchStream(t *testing.T, f *fixture, msg *fspb.WatchDirRequest) (<-chan *fspb.WatchDirResponse, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := f.client.WatchDir(ctx, req(msg, ""))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if !stream.Receive() {
		cancel()
		t.Fatalf("no start event: %v", stream.Err())
	}
	if stream.Msg().GetStart() == nil {
		cancel()
		t.Fatalf("first event = %v, want start", stream.Msg())
	}
	ch := make(chan *fspb.WatchDirResponse, 1000)
	go func() {
		defer close(ch)
		for stream.Receive() {
			ch <- stream.Msg()
		}
	}()
	t.Cleanup(func() { cancel(); stream.Close() })
	return ch, cancel
}

type evKey struct {
	name string
	typ  fspb.EventType
}

// collect waits until every wanted event has arrived.
func collect(t *testing.T, ch <-chan *fspb.WatchDirResponse, want ...evKey) map[evKey]*fspb.FilesystemEvent {
	t.Helper()
	got := map[evKey]*fspb.FilesystemEvent{}
	timeout := time.After(5 * time.Second)
	for {
		missing := 0
		for _, w := range want {
			if got[w] == nil {
				missing++
			}
		}
		if missing == 0 {
			return got
		}
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatalf("stream ended; got %v, want %v", got, want)
			}
			if ev := m.GetFilesystem(); ev != nil {
				got[evKey{ev.GetName(), ev.GetType()}] = ev
			}
		case <-timeout:
			t.Fatalf("timed out; got %v, want %v", keys(got), want)
		}
	}
}

func keys(m map[evKey]*fspb.FilesystemEvent) []evKey {
	var k []evKey
	for key := range m {
		k = append(k, key)
	}
	return k
}

const (
	create = fspb.EventType_EVENT_TYPE_CREATE
	write  = fspb.EventType_EVENT_TYPE_WRITE
	remove = fspb.EventType_EVENT_TYPE_REMOVE
	rename = fspb.EventType_EVENT_TYPE_RENAME
	chmod  = fspb.EventType_EVENT_TYPE_CHMOD
)

func TestWatchDir(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	ch, _ := watchStream(t, f, &fspb.WatchDirRequest{Path: dir, IncludeEntry: true})

	p := filepath.Join(dir, "f.txt")
	writeFile(t, p, "hello")
	got := collect(t, ch, evKey{"f.txt", create}, evKey{"f.txt", write})
	if e := got[evKey{"f.txt", write}].GetEntry(); e.GetPath() != p || e.GetType() != fspb.FileType_FILE_TYPE_FILE {
		t.Errorf("write entry = %v, want the file's entry", e)
	}
	os.Chmod(p, 0o600)
	collect(t, ch, evKey{"f.txt", chmod})
	os.Rename(p, filepath.Join(dir, "g.txt"))
	collect(t, ch, evKey{"f.txt", rename}, evKey{"g.txt", create})
	os.Remove(filepath.Join(dir, "g.txt"))
	got = collect(t, ch, evKey{"g.txt", remove})
	if got[evKey{"g.txt", remove}].Entry != nil {
		t.Errorf("remove event carries an entry")
	}
}

func TestWatchDirNotRecursive(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	ch, _ := watchStream(t, f, &fspb.WatchDirRequest{Path: dir})
	writeFile(t, filepath.Join(dir, "sub", "hidden"), "x")
	writeFile(t, filepath.Join(dir, "marker"), "x")
	got := collect(t, ch, evKey{"marker", create})
	for k := range got {
		if strings.HasPrefix(k.name, "sub/") {
			t.Errorf("non-recursive watch reported %v", k)
		}
	}
}

func TestWatchDirRecursive(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "old"), 0o755)
	ch, _ := watchStream(t, f, &fspb.WatchDirRequest{Path: dir, Recursive: true})

	writeFile(t, filepath.Join(dir, "old", "a"), "x")
	collect(t, ch, evKey{"old/a", create})

	// A directory made after the watch started is watched too, including
	// what was created in it before envd could add it.
	if err := os.MkdirAll(filepath.Join(dir, "new", "deep"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "new", "deep", "early"), "x")
	collect(t, ch, evKey{"new", create}, evKey{"new/deep", create}, evKey{"new/deep/early", create})
	writeFile(t, filepath.Join(dir, "new", "deep", "late"), "x")
	collect(t, ch, evKey{"new/deep/late", create}, evKey{"new/deep/late", write})
	os.Remove(filepath.Join(dir, "new", "deep", "late"))
	collect(t, ch, evKey{"new/deep/late", remove})
}

func TestWatchDirKeepaliveAndClose(t *testing.T) {
	f := newFixture(t, WithKeepalive(50*time.Millisecond))
	ch, _ := watchStream(t, f, &fspb.WatchDirRequest{Path: t.TempDir()})
	select {
	case m := <-ch:
		if m.GetKeepalive() == nil {
			t.Fatalf("event = %v, want keepalive", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no keepalive")
	}
	f.svc.Close()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return // stream ended at Close
			}
		case <-deadline:
			t.Fatal("stream still open after Close")
		}
	}
}

func TestWatchDirErrors(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "file"), "x")
	tests := []struct {
		name string
		path string
		want connect.Code
	}{
		{"missing", filepath.Join(dir, "nope"), connect.CodeNotFound},
		{"file", filepath.Join(dir, "file"), connect.CodeInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stream, err := f.client.WatchDir(context.Background(), req(&fspb.WatchDirRequest{Path: tt.path}, ""))
			if err == nil {
				for stream.Receive() {
					t.Errorf("unexpected event %v", stream.Msg())
				}
				err = stream.Err()
			}
			if got := connect.CodeOf(err); got != tt.want {
				t.Fatalf("code = %v (%v), want %v", got, err, tt.want)
			}
			_, err = f.client.CreateWatcher(context.Background(), req(&fspb.CreateWatcherRequest{Path: tt.path}, ""))
			if got := connect.CodeOf(err); got != tt.want {
				t.Fatalf("CreateWatcher code = %v (%v), want %v", got, err, tt.want)
			}
		})
	}
}

func TestPollingWatcher(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	dir := t.TempDir()
	res, err := f.client.CreateWatcher(ctx, req(&fspb.CreateWatcherRequest{Path: dir, Recursive: true, IncludeEntry: true}, ""))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Msg.GetWatcherId()
	res2, err := f.client.CreateWatcher(ctx, req(&fspb.CreateWatcherRequest{Path: dir}, ""))
	if err != nil {
		t.Fatal(err)
	}
	if id == "" || id == res2.Msg.GetWatcherId() {
		t.Fatalf("watcher ids %q and %q, want distinct non-empty", id, res2.Msg.GetWatcherId())
	}

	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	time.Sleep(100 * time.Millisecond) // let the watcher add sub
	writeFile(t, filepath.Join(dir, "sub", "x"), "1")

	want := map[evKey]bool{{"sub", create}: false, {"sub/x", create}: false, {"sub/x", write}: false}
	deadline := time.Now().Add(5 * time.Second)
	for pending := len(want); pending > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("missing events: %v", want)
		}
		evs, err := f.client.GetWatcherEvents(ctx, req(&fspb.GetWatcherEventsRequest{WatcherId: id}, ""))
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs.Msg.GetEvents() {
			k := evKey{ev.GetName(), ev.GetType()}
			if seen, ok := want[k]; ok && !seen {
				want[k] = true
				pending--
			}
			if ev.GetEntry() == nil {
				t.Errorf("event %v has no entry", k)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Drained: a second poll without changes is empty.
	evs, err := f.client.GetWatcherEvents(ctx, req(&fspb.GetWatcherEventsRequest{WatcherId: id}, ""))
	if err != nil || len(evs.Msg.GetEvents()) != 0 {
		t.Fatalf("second poll = %v, %v; want empty", evs.Msg.GetEvents(), err)
	}

	if _, err := f.client.RemoveWatcher(ctx, req(&fspb.RemoveWatcherRequest{WatcherId: id}, "")); err != nil {
		t.Fatal(err)
	}
	for _, call := range []func() error{
		func() error {
			_, err := f.client.GetWatcherEvents(ctx, req(&fspb.GetWatcherEventsRequest{WatcherId: id}, ""))
			return err
		},
		func() error {
			_, err := f.client.RemoveWatcher(ctx, req(&fspb.RemoveWatcherRequest{WatcherId: id}, ""))
			return err
		},
	} {
		if got := connect.CodeOf(call()); got != connect.CodeNotFound {
			t.Errorf("after remove: code = %v, want not_found", got)
		}
	}
}
