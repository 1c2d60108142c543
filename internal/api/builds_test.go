package api

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	orchestratorv1 "github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1"
)

// buildHooks gives a fakeNode a BuildTemplate behaviour for a test.
var buildHooks sync.Map // *fakeNode → func(context.Context, *orchestratorv1.BuildTemplateRequest) (*orchestratorv1.BuildTemplateResponse, error)

type buildHook = func(context.Context, *orchestratorv1.BuildTemplateRequest) (*orchestratorv1.BuildTemplateResponse, error)

func (f *fakeNode) BuildTemplate(ctx context.Context, req *connect.Request[orchestratorv1.BuildTemplateRequest], stream *connect.ServerStream[orchestratorv1.BuildTemplateResponse]) error {
	if err := f.check(req.Header(), "BuildTemplate", req.Msg.GetCacheKey()); err != nil {
		return err
	}
	h, ok := buildHooks.Load(f)
	if !ok {
		return connect.NewError(connect.CodeNotFound, errors.New("no cached layer"))
	}
	resp, err := h.(buildHook)(ctx, req.Msg)
	if err != nil {
		return err
	}
	return stream.Send(resp)
}

func (e *env) onBuild(h buildHook) {
	buildHooks.Store(e.node, h)
	e.t.Cleanup(func() { buildHooks.Delete(e.node) })
}

// newTemplate registers a template for team A and returns its and its build's IDs.
func (e *env) newTemplate(name string) (string, string) {
	e.t.Helper()
	r := e.do(e.keyA, "POST", "/v3/templates", map[string]any{"name": name})
	if r.status != http.StatusAccepted {
		e.t.Fatalf("create template: %d %s", r.status, r.body)
	}
	var t templateRequestReply
	r.decode(e.t, &t)
	return t.TemplateID, t.BuildID
}

// waitBuild polls a build until it is ready or failed.
func (e *env) waitBuild(tid, bid string) buildStatusJSON {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		r := e.do(e.keyA, "GET", "/templates/"+tid+"/builds/"+bid+"/status", nil)
		var st buildStatusJSON
		r.decode(e.t, &st)
		if st.Status == "ready" || st.Status == "error" {
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Fatalf("build %s did not finish", bid)
	return buildStatusJSON{}
}

type tarEntry struct {
	name, link string
	typ        byte
	body       string
}

func tarGz(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, en := range entries {
		h := &tar.Header{Name: en.name, Linkname: en.link, Typeflag: en.typ, Mode: 0o644, Size: int64(len(en.body))}
		if en.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(en.body)); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}

func hashOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// uploadURL asks where to upload the files with this hash.
func (e *env) uploadURL(tid, hash string) string {
	e.t.Helper()
	r := e.do(e.keyA, "GET", "/templates/"+tid+"/files/"+hash, nil)
	var link struct {
		Present bool   `json:"present"`
		URL     string `json:"url"`
	}
	r.decode(e.t, &link)
	if link.Present || link.URL == "" {
		e.t.Fatalf("files link: %s", r.body)
	}
	return link.URL
}

func put(t *testing.T, url string, body []byte, chunked bool) reply {
	t.Helper()
	var rd interface{ Read([]byte) (int, error) } = bytes.NewReader(body)
	if chunked {
		rd = struct{ *bytes.Reader }{bytes.NewReader(body)} // unknown length
	}
	req, err := http.NewRequest("PUT", url, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return reply{status: resp.StatusCode, body: b.Bytes()}
}

func TestBuildRefusesUnsafeArchives(t *testing.T) {
	files := t.TempDir()
	e := newEnv(t, Config{TemplateFilesDir: filepath.Join(files, "uploads")})
	tests := []struct {
		name    string
		entries []tarEntry
		want    string
	}{
		{"dotdot", []tarEntry{{name: "../../evil", typ: tar.TypeReg, body: "x"}}, "climbs out"},
		{"nested dotdot", []tarEntry{{name: "a/../../../evil", typ: tar.TypeReg, body: "x"}}, "climbs out"},
		{"absolute", []tarEntry{{name: "/tmp/evil", typ: tar.TypeReg, body: "x"}}, "absolute path"},
		{"symlink out", []tarEntry{{name: "l", typ: tar.TypeSymlink, link: "../../.."}}, "leaves the target"},
		{"hard link out", []tarEntry{{name: "h", typ: tar.TypeLink, link: "../../etc/passwd"}}, "leaves the target"},
		{"device", []tarEntry{{name: "d", typ: tar.TypeBlock}}, "device node"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tid, bid := e.newTemplate("unsafe-" + strings.ReplaceAll(tt.name, " ", "-"))
			data := tarGz(t, tt.entries...)
			hash := hashOf(data)
			msg := put(t, e.uploadURL(tid, hash), data, false).errBody(t, http.StatusBadRequest)
			if !strings.Contains(msg, tt.want) {
				t.Errorf("upload refused with %q, want %q", msg, tt.want)
			}
			// Not recorded: the SDK would be asked to upload again.
			if r := e.do(e.keyA, "GET", "/templates/"+tid+"/files/"+hash, nil); !strings.Contains(string(r.body), `"present":false`) {
				t.Errorf("refused files recorded: %s", r.body)
			}
			// A build using them fails at that step, with a reason.
			r := e.do(e.keyA, "POST", "/v2/templates/"+tid+"/builds/"+bid, map[string]any{
				"fromTemplate": "base",
				"steps":        []map[string]any{{"type": "COPY", "args": []string{"evil", "/x"}, "filesHash": hash}},
			})
			if r.status != http.StatusAccepted {
				t.Fatalf("start build: %d %s", r.status, r.body)
			}
			st := e.waitBuild(tid, bid)
			if st.Status != "error" || st.Reason == nil || st.Reason.Step != "1" || !strings.Contains(st.Reason.Message, "not uploaded") {
				t.Errorf("build: status %s, reason %+v", st.Status, st.Reason)
			}
		})
	}
	// Nothing anywhere but the uploads directory, and no stray temp files.
	var stray []string
	filepath.Walk(files, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			stray = append(stray, p)
		}
		return nil
	})
	if len(stray) > 0 {
		t.Errorf("files written: %v", stray)
	}
	for _, p := range []string{"/tmp/evil", filepath.Join(os.TempDir(), "evil")} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s exists", p)
		}
	}
}

func TestBuildUploadTooLarge(t *testing.T) {
	e := newEnv(t, Config{TemplateFilesDir: t.TempDir(), MaxUploadBytes: 4096})
	tid, _ := e.newTemplate("big")
	big := bytes.Repeat([]byte("x"), 8192)
	for _, chunked := range []bool{false, true} {
		hash := hashOf(append(big, byte(len(tid))))
		msg := put(t, e.uploadURL(tid, hash), big, chunked).errBody(t, http.StatusRequestEntityTooLarge)
		if !strings.Contains(msg, "larger than 4096 bytes") {
			t.Errorf("chunked=%v: %q", chunked, msg)
		}
	}
	// A small archive that unpacks to more than the limit allows (4×).
	bomb := tarGz(t, tarEntry{name: "zeros", typ: tar.TypeReg, body: string(make([]byte, 64<<10))})
	if len(bomb) > 4096 {
		t.Fatalf("test archive is %d bytes", len(bomb))
	}
	msg := put(t, e.uploadURL(tid, hashOf(bomb)), bomb, false).errBody(t, http.StatusBadRequest)
	if !strings.Contains(msg, "more than 16384 bytes") {
		t.Errorf("archive bomb: %q", msg)
	}
}

func TestBuildFailures(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		hook buildHook
		spec map[string]any
		want []string // substrings of the reason
	}{
		{
			name: "unknown base image",
			hook: func(_ context.Context, r *orchestratorv1.BuildTemplateRequest) (*orchestratorv1.BuildTemplateResponse, error) {
				if r.GetImage() == nil {
					return nil, connect.NewError(connect.CodeInternal, errors.New("expected an image import"))
				}
				return nil, connect.NewError(connect.CodeNotFound, errors.New("pull registry.local/nope:1: image not found in the registry: MANIFEST_UNKNOWN"))
			},
			spec: map[string]any{"fromImage": "registry.local/nope:1", "steps": []any{}},
			want: []string{`unknown base image "registry.local/nope:1"`, "MANIFEST_UNKNOWN"},
		},
		{
			name: "unknown base template",
			spec: map[string]any{"fromTemplate": "no-such-template", "steps": []any{}},
			want: []string{`unknown base template "no-such-template"`},
		},
		{
			name: "ready command never succeeds",
			cfg:  Config{ReadyTimeout: time.Second},
			hook: func(ctx context.Context, r *orchestratorv1.BuildTemplateRequest) (*orchestratorv1.BuildTemplateResponse, error) {
				// As the node does: poll the ready command for ReadyTimeoutS.
				if r.GetReadyCmd() != "false" || r.GetReadyTimeoutS() != 1 {
					return nil, connect.NewError(connect.CodeInternal, errors.New("ready command or timeout not passed on"))
				}
				rctx, cancel := context.WithTimeout(ctx, time.Duration(r.GetReadyTimeoutS())*time.Second)
				defer cancel()
				<-rctx.Done()
				return nil, connect.NewError(connect.CodeDeadlineExceeded, errors.New("ready command never succeeded: context deadline exceeded (last: exit status 1)"))
			},
			spec: map[string]any{"fromTemplate": "base", "readyCmd": "false", "steps": []any{}},
			want: []string{"ready command never succeeded"},
		},
		{
			name: "build timeout",
			cfg:  Config{BuildTimeout: 300 * time.Millisecond},
			hook: func(ctx context.Context, _ *orchestratorv1.BuildTemplateRequest) (*orchestratorv1.BuildTemplateResponse, error) {
				<-ctx.Done()
				return nil, connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
			},
			spec: map[string]any{"fromTemplate": "base", "readyCmd": "sleep 1000", "steps": []any{}},
			want: []string{"build timed out after 300ms"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.TemplateFilesDir = t.TempDir()
			e := newEnv(t, tt.cfg)
			if tt.hook != nil {
				e.onBuild(tt.hook)
			}
			tid, bid := e.newTemplate("failing")
			r := e.do(e.keyA, "POST", "/v2/templates/"+tid+"/builds/"+bid, tt.spec)
			if r.status != http.StatusAccepted {
				t.Fatalf("start build: %d %s", r.status, r.body)
			}
			st := e.waitBuild(tid, bid)
			if st.Status != "error" || st.Reason == nil {
				t.Fatalf("got status %s, reason %+v; want an error", st.Status, st.Reason)
			}
			for _, w := range tt.want {
				if !strings.Contains(st.Reason.Message, w) {
					t.Errorf("reason %q does not contain %q", st.Reason.Message, w)
				}
			}
			var last string
			for _, l := range st.LogEntries {
				last = l.Message
			}
			if !strings.HasPrefix(last, "build failed: ") {
				t.Errorf("last log line %q", last)
			}
		})
	}
}
