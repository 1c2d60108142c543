package files

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/internal/envd/filesystem"
	"github.com/cocoon-run/cocoon/internal/envd/identity"
	"github.com/cocoon-run/cocoon/internal/envd/session"
)

func newServer(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(New(&session.Session{}, nil))
	t.Cleanup(srv.Close)
	return srv
}

func filesURL(base string, q url.Values) string {
	return base + "/files?" + q.Encode()
}

func decodeError(t *testing.T, res *http.Response) (int, string) {
	t.Helper()
	var e struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if err := json.NewDecoder(res.Body).Decode(&e); err != nil {
		t.Fatalf("error body: %v", err)
	}
	return e.Code, e.Message
}

func TestDownload(t *testing.T) {
	srv := newServer(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "hello.txt")
	os.WriteFile(p, []byte("hello world"), 0o644)
	// /proc files say size 0 and some cannot seek to their end; this
	// process is the server, so its own files are what envd must send.
	environ, err := os.ReadFile("/proc/self/environ")
	if err != nil || len(environ) == 0 {
		t.Fatalf("read /proc/self/environ: %d bytes, %v", len(environ), err)
	}
	cmdline, _ := os.ReadFile("/proc/self/cmdline")
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)

	tests := []struct {
		name       string
		path       string
		rangeHdr   string
		wantStatus int
		wantBody   string
	}{
		{"file", p, "", 200, "hello world"},
		{"range", p, "bytes=6-", 206, "world"},
		{"missing", filepath.Join(dir, "nope"), "", 404, ""},
		{"directory", dir, "", 400, ""},
		{"no path", "", "", 400, ""},
		{"proc environ", "/proc/self/environ", "", 200, string(environ)},
		{"proc cmdline", "/proc/self/cmdline", "", 200, string(cmdline)},
		{"empty file", empty, "", 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := http.NewRequest(http.MethodGet, filesURL(srv.URL, url.Values{"path": {tt.path}}), nil)
			if tt.rangeHdr != "" {
				r.Header.Set("Range", tt.rangeHdr)
			}
			res, err := http.DefaultClient.Do(r)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			if res.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d, want %d", res.StatusCode, tt.wantStatus)
			}
			if tt.wantStatus >= 400 {
				if code, msg := decodeError(t, res); code != tt.wantStatus || msg == "" {
					t.Errorf("error body = %d %q", code, msg)
				}
				return
			}
			b, _ := io.ReadAll(res.Body)
			if string(b) != tt.wantBody {
				t.Errorf("body = %q, want %q", b, tt.wantBody)
			}
		})
	}
}

func postRaw(t *testing.T, base string, q url.Values, body io.Reader, hdr http.Header) *http.Response {
	t.Helper()
	r, _ := http.NewRequest(http.MethodPost, filesURL(base, q), body)
	r.Header.Set("Content-Type", "application/octet-stream")
	for k, v := range hdr {
		r.Header[k] = v
	}
	res, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Body.Close() })
	return res
}

func decodeWritten(t *testing.T, res *http.Response) []WrittenFile {
	t.Helper()
	if res.StatusCode != 200 {
		b, _ := io.ReadAll(res.Body)
		t.Fatalf("status = %d: %s", res.StatusCode, b)
	}
	var w []WrittenFile
	if err := json.NewDecoder(res.Body).Decode(&w); err != nil {
		t.Fatal(err)
	}
	return w
}

func TestUploadRaw(t *testing.T) {
	srv := newServer(t)
	dir := t.TempDir()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("compressed content"))
	zw.Close()

	tests := []struct {
		name     string
		path     string
		body     []byte
		encoding string
		want     string
	}{
		{"plain", filepath.Join(dir, "a.txt"), []byte("plain content"), "", "plain content"},
		{"gzip", filepath.Join(dir, "b.txt"), gz.Bytes(), "gzip", "compressed content"},
		{"new parents", filepath.Join(dir, "x", "y", "c.txt"), []byte("deep"), "", "deep"},
		{"overwrite", filepath.Join(dir, "a.txt"), []byte("again"), "", "again"},
		{"empty", filepath.Join(dir, "empty"), nil, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := http.Header{}
			if tt.encoding != "" {
				hdr.Set("Content-Encoding", tt.encoding)
			}
			got := decodeWritten(t, postRaw(t, srv.URL, url.Values{"path": {tt.path}}, bytes.NewReader(tt.body), hdr))
			want := WrittenFile{Path: tt.path, Name: filepath.Base(tt.path), Type: "file"}
			if len(got) != 1 || got[0] != want {
				t.Errorf("reply = %+v, want [%+v]", got, want)
			}
			if b, err := os.ReadFile(tt.path); err != nil || string(b) != tt.want {
				t.Errorf("content = %q, %v; want %q", b, err, tt.want)
			}
		})
	}
	assertNoTemp(t, dir)
}

func TestUploadErrors(t *testing.T) {
	srv := newServer(t)
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "adir"), 0o755)
	os.WriteFile(filepath.Join(dir, "afile"), nil, 0o644)
	tests := []struct {
		name     string
		path     string
		body     string
		encoding string
		want     int
	}{
		{"no path", "", "x", "", 400},
		{"onto a directory", filepath.Join(dir, "adir"), "x", "", 400},
		{"parent is a file", filepath.Join(dir, "afile", "x"), "x", "", 400},
		{"bad gzip", filepath.Join(dir, "g"), "not gzip", "gzip", 400},
		{"unknown user", filepath.Join(dir, "u"), "x", "", 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := url.Values{"path": {tt.path}}
			if tt.name == "unknown user" {
				q.Set("username", "no-such-user-xyz")
			}
			hdr := http.Header{}
			if tt.encoding != "" {
				hdr.Set("Content-Encoding", tt.encoding)
			}
			res := postRaw(t, srv.URL, q, strings.NewReader(tt.body), hdr)
			if res.StatusCode != tt.want {
				t.Fatalf("status = %d, want %d", res.StatusCode, tt.want)
			}
			if code, _ := decodeError(t, res); code != tt.want {
				t.Errorf("body code = %d, want %d", code, tt.want)
			}
		})
	}
	assertNoTemp(t, dir)
}

// multipartBody builds a form whose parts name their full target paths;
// mime/multipart's CreateFormFile would do the same.
func multipartBody(t *testing.T, files map[string]string, order []string) (*bytes.Buffer, string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, name := range order {
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="file"; filename=%q`, name))
		h.Set("Content-Type", "application/octet-stream")
		w, err := mw.CreatePart(h)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, files[name])
	}
	// A field that is not a file is ignored.
	mw.WriteField("other", "ignored")
	mw.Close()
	return &buf, mw.FormDataContentType()
}

func TestUploadMultipart(t *testing.T) {
	srv := newServer(t)
	dir := t.TempDir()
	files := map[string]string{}
	var order []string
	for i := range 50 {
		p := filepath.Join(dir, fmt.Sprintf("d%d", i%5), fmt.Sprintf("sub%d", i%3), fmt.Sprintf("f%d.txt", i))
		files[p] = strings.Repeat(fmt.Sprint(i), i*100)
		order = append(order, p)
	}
	body, ctype := multipartBody(t, files, order)
	res, err := http.Post(srv.URL+"/files", ctype, body)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	got := decodeWritten(t, res)
	if len(got) != len(order) {
		t.Fatalf("reply has %d files, want %d", len(got), len(order))
	}
	for i, p := range order {
		if got[i].Path != p || got[i].Name != filepath.Base(p) || got[i].Type != "file" {
			t.Errorf("reply[%d] = %+v, want path %s", i, got[i], p)
		}
		if b, err := os.ReadFile(p); err != nil || string(b) != files[p] {
			t.Errorf("%s: %d bytes, %v; want %d bytes", p, len(b), err, len(files[p]))
		}
	}
	assertNoTemp(t, dir)
}

func TestUploadMultipartWithPath(t *testing.T) {
	srv := newServer(t)
	dir := t.TempDir()
	tests := []struct {
		name     string
		path     string
		filename string
		want     string
	}{
		{"path names the file", filepath.Join(dir, "target.txt"), "ignored.txt", filepath.Join(dir, "target.txt")},
		{"path names a directory", dir, "/elsewhere/inner.txt", filepath.Join(dir, "inner.txt")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, ctype := multipartBody(t, map[string]string{tt.filename: "content"}, []string{tt.filename})
			res, err := http.Post(filesURL(srv.URL, url.Values{"path": {tt.path}}), ctype, body)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			got := decodeWritten(t, res)
			if len(got) != 1 || got[0].Path != tt.want {
				t.Fatalf("reply = %+v, want path %s", got, tt.want)
			}
			if b, _ := os.ReadFile(tt.want); string(b) != "content" {
				t.Errorf("content = %q", b)
			}
		})
	}
	// A form without a file part is refused.
	body, ctype := multipartBody(t, nil, nil)
	res, err := http.Post(srv.URL+"/files", ctype, body)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 400 {
		t.Errorf("empty form: status %d, want 400", res.StatusCode)
	}
}

func TestUploadOwnershipModeMetadata(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to chown")
	}
	nobody, err := identity.Lookup("nobody")
	if err != nil {
		t.Skip("no nobody account")
	}
	srv := newServer(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "new", "owned.txt")
	hdr := http.Header{}
	hdr.Set("X-Metadata-Author", "alice")
	hdr.Set("X-Metadata-Build-Id", "42")
	decodeWritten(t, postRaw(t, srv.URL, url.Values{"path": {p}, "username": {"nobody"}}, strings.NewReader("x"), hdr))
	for _, q := range []string{p, filepath.Dir(p)} {
		fi, err := os.Stat(q)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != nobody.UID || st.Gid != nobody.GID {
			t.Errorf("%s owned by %d:%d, want %d:%d", q, st.Uid, st.Gid, nobody.UID, nobody.GID)
		}
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("mode = %v, want 0644", fi.Mode().Perm())
	}
	md := filesystem.Metadata(p)
	if md == nil {
		t.Skip("filesystem without user xattrs")
	}
	if md["author"] != "alice" || md["build-id"] != "42" {
		t.Errorf("metadata = %v", md)
	}

	// Overwriting keeps the permissions of the file.
	os.Chmod(p, 0o600)
	decodeWritten(t, postRaw(t, srv.URL, url.Values{"path": {p}}, strings.NewReader("y"), nil))
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode after overwrite = %v, want 0600", fi.Mode().Perm())
	}
}

// assertNoTemp fails when an upload left a temporary file under dir.
func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.Contains(fi.Name(), ".envd-upload-") {
			t.Errorf("temporary file left behind: %s", p)
		}
		return nil
	})
}

func TestUploadDiskFull(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	srv := newServer(t)
	target := filepath.Join(dir, "big.bin")
	os.WriteFile(target, []byte("previous"), 0o644)

	res := postRaw(t, srv.URL, url.Values{"path": {target}}, bytes.NewReader(make([]byte, 4<<20)), nil)
	if res.StatusCode != http.StatusInsufficientStorage {
		t.Fatalf("status = %d, want 507", res.StatusCode)
	}
	if b, _ := os.ReadFile(target); string(b) != "previous" {
		t.Errorf("target = %d bytes, want the previous content kept", len(b))
	}
	des, _ := os.ReadDir(dir)
	if len(des) != 1 {
		t.Errorf("dir holds %d entries, want only the target", len(des))
	}

	// Multipart: the second file does not fit; the first stays written.
	files := map[string]string{filepath.Join(dir, "small"): "ok", filepath.Join(dir, "huge"): strings.Repeat("x", 4<<20)}
	body, ctype := multipartBody(t, files, []string{filepath.Join(dir, "small"), filepath.Join(dir, "huge")})
	mres, err := http.Post(srv.URL+"/files", ctype, body)
	if err != nil {
		t.Fatal(err)
	}
	mres.Body.Close()
	if mres.StatusCode != http.StatusInsufficientStorage {
		t.Errorf("multipart status = %d, want 507", mres.StatusCode)
	}
	if _, err := os.Stat(filepath.Join(dir, "huge")); err == nil {
		t.Error("partial huge file left")
	}
	assertNoTemp(t, dir)
}

func TestUploadClientAbort(t *testing.T) {
	srv := newServer(t)
	dir := t.TempDir()
	target := filepath.Join(dir, "aborted")
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /files?path=%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\n", url.QueryEscape(target))
	conn.Write(make([]byte, 1<<20))
	time.Sleep(100 * time.Millisecond) // the handler is mid-copy
	conn.Close()

	deadline := time.Now().Add(5 * time.Second)
	for {
		des, _ := os.ReadDir(dir)
		if len(des) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("left behind after abort: %v", des)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMethodNotAllowed(t *testing.T) {
	srv := newServer(t)
	r, _ := http.NewRequest(http.MethodDelete, srv.URL+"/files?path=/tmp", nil)
	res, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("status = %d, want 405", res.StatusCode)
	}
}
