package envd

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"

	fspb "github.com/cocoon-run/cocoon/api/gen/filesystem"
	"github.com/cocoon-run/cocoon/api/gen/filesystem/filesystemconnect"
	procpb "github.com/cocoon-run/cocoon/api/gen/process"
	"github.com/cocoon-run/cocoon/api/gen/process/processconnect"
	"github.com/cocoon-run/cocoon/internal/envd/files"
)

// fakeSystem records what /init asked of the machine.
type fakeSystem struct {
	mu       sync.Mutex
	clock    time.Time
	hostname string
	seed     []byte
}

func (f *fakeSystem) SetClock(t time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clock = t
	return nil
}

func (f *fakeSystem) SetHostname(n string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hostname = n
	return nil
}

func (f *fakeSystem) AddEntropy(b []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seed = append(f.seed, b...)
	return nil
}

func newTestServer(t *testing.T, cfg Config) (*Server, *httptest.Server, *fakeSystem) {
	t.Helper()
	sys := &fakeSystem{}
	cfg.System = sys
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		hs.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s, hs, sys
}

func do(t *testing.T, method, u, token string, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	r, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		r.Header.Set(AccessTokenHeader, token)
	}
	if body != nil {
		r.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, b
}

func TestAccessToken(t *testing.T) {
	_, hs, _ := newTestServer(t, Config{AccessToken: "tok"})
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	os.WriteFile(p, []byte("data"), 0o644)
	get := url.Values{"path": {p}}

	tests := []struct {
		name, method, path, token string
		want                      int
	}{
		{"health is open", "GET", "/health", "", 204},
		{"envs without token", "GET", "/envs", "", 401},
		{"envs wrong token", "GET", "/envs", "nope", 401},
		{"envs", "GET", "/envs", "tok", 200},
		{"metrics without token", "GET", "/metrics", "", 401},
		{"metrics", "GET", "/metrics", "tok", 200},
		{"files without token", "GET", "/files?" + get.Encode(), "", 401},
		{"files wrong token", "GET", "/files?" + get.Encode(), "nope", 401},
		{"files", "GET", "/files?" + get.Encode(), "tok", 200},
		{"files signed", "GET", "/files?" + url.Values{"path": {p}, "signature": {files.Sign(p, files.OpRead, "", "tok", 0)}}.Encode(), "", 200},
		{"files signed wrong", "GET", "/files?" + url.Values{"path": {p}, "signature": {files.Sign(p, files.OpRead, "", "other", 0)}}.Encode(), "", 401},
		{"files signed expired", "GET", "/files?" + url.Values{"path": {p}, "signature": {files.Sign(p, files.OpRead, "", "tok", 1000)}, "signature_expiration": {"1000"}}.Encode(), "", 401},
		{"unknown path without token", "GET", "/nope", "", 401},
		{"unknown path", "GET", "/nope", "tok", 404},
		{"init without token", "POST", "/init", "", 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.method == "POST" {
				body = strings.NewReader("{}")
			}
			res, b := do(t, tt.method, hs.URL+tt.path, tt.token, body)
			if res.StatusCode != tt.want {
				t.Fatalf("status = %d (%s), want %d", res.StatusCode, b, tt.want)
			}
			if tt.want == 401 {
				var e struct{ Code int }
				if json.Unmarshal(b, &e); e.Code != 401 {
					t.Errorf("body = %s, want JSON code 401", b)
				}
			}
		})
	}

	// RPCs: unauthenticated without the token, on both services.
	for _, tok := range []string{"", "nope"} {
		fc := filesystemconnect.NewFilesystemClient(hs.Client(), hs.URL, connect.WithProtoJSON())
		r := connect.NewRequest(&fspb.StatRequest{Path: dir})
		if tok != "" {
			r.Header().Set(AccessTokenHeader, tok)
		}
		if _, err := fc.Stat(context.Background(), r); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("Stat with token %q: %v, want unauthenticated", tok, err)
		}
		ws, err := fc.WatchDir(context.Background(), connect.NewRequest(&fspb.WatchDirRequest{Path: dir}))
		if err == nil {
			for ws.Receive() {
				t.Error("watch event without token")
			}
			err = ws.Err()
		}
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("WatchDir with token %q: %v, want unauthenticated", tok, err)
		}
		pc := processconnect.NewProcessClient(hs.Client(), hs.URL, connect.WithProtoJSON())
		if _, err := pc.List(context.Background(), connect.NewRequest(&procpb.ListRequest{})); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("process List: %v, want unauthenticated", err)
		}
	}
	fc := filesystemconnect.NewFilesystemClient(hs.Client(), hs.URL, connect.WithProtoJSON())
	r := connect.NewRequest(&fspb.StatRequest{Path: dir})
	r.Header().Set(AccessTokenHeader, "tok")
	if _, err := fc.Stat(context.Background(), r); err != nil {
		t.Errorf("Stat with token: %v", err)
	}
}

func TestInit(t *testing.T) {
	s, hs, sys := newTestServer(t, Config{})
	ts := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	body := `{"envVars":{"FOO":"bar","A":"1"},"accessToken":"t1","defaultUser":"root",
		"timestamp":"2030-01-02T03:04:05Z","hostname":"sbx-1","seed":"AQIDBA=="}`
	if res, b := do(t, "POST", hs.URL+"/init", "", strings.NewReader(body)); res.StatusCode != 204 {
		t.Fatalf("init: %d %s", res.StatusCode, b)
	}
	if !sys.clock.Equal(ts) || sys.hostname != "sbx-1" || !bytes.Equal(sys.seed, []byte{1, 2, 3, 4}) {
		t.Errorf("system = clock %v host %q seed %v", sys.clock, sys.hostname, sys.seed)
	}
	if s.Session().DefaultUser() != "root" || s.Session().Token() != "t1" {
		t.Errorf("session user %q token %q", s.Session().DefaultUser(), s.Session().Token())
	}

	// The token is now required, also by /init itself; a second /init
	// merges envs and rotates the token (what a resume does).
	if res, _ := do(t, "POST", hs.URL+"/init", "", strings.NewReader(`{"accessToken":"evil"}`)); res.StatusCode != 401 {
		t.Fatalf("init without current token: %d, want 401", res.StatusCode)
	}
	if res, _ := do(t, "POST", hs.URL+"/init", "t1", strings.NewReader(`{"envVars":{"A":"2"},"accessToken":"t2","timestamp":1893553445}`)); res.StatusCode != 204 {
		t.Fatalf("second init: %d", res.StatusCode)
	}
	if want := time.Unix(1893553445, 0); !sys.clock.Equal(want) {
		t.Errorf("clock = %v, want %v", sys.clock, want)
	}
	if res, _ := do(t, "GET", hs.URL+"/envs", "t1", nil); res.StatusCode != 401 {
		t.Errorf("old token still accepted: %d", res.StatusCode)
	}
	res, b := do(t, "GET", hs.URL+"/envs", "t2", nil)
	var envs map[string]string
	if err := json.Unmarshal(b, &envs); err != nil || res.StatusCode != 200 {
		t.Fatalf("envs: %d %s", res.StatusCode, b)
	}
	if envs["FOO"] != "bar" || envs["A"] != "2" {
		t.Errorf("envs = %v", envs)
	}

	// A started process sees the session's env vars.
	pc := processconnect.NewProcessClient(hs.Client(), hs.URL, connect.WithProtoJSON())
	sr := connect.NewRequest(&procpb.StartRequest{Process: &procpb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", "echo $FOO-$A"}}})
	sr.Header().Set(AccessTokenHeader, "t2")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := pc.Start(ctx, sr)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	for stream.Receive() {
		out.Write(stream.Msg().GetEvent().GetData().GetStdout())
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("process stream: %v", err)
	}
	if got := strings.TrimSpace(out.String()); got != "bar-2" {
		t.Errorf("process output = %q, want bar-2", got)
	}
}

func TestInitBadRequests(t *testing.T) {
	s, hs, sys := newTestServer(t, Config{})
	tests := []struct{ name, body string }{
		{"bad json", `{"envVars":`},
		{"wrong type", `{"envVars":[1]}`},
		{"bad timestamp", `{"timestamp":"yesterday"}`},
		{"negative timestamp", `{"timestamp":-5}`},
		{"bad seed", `{"seed":"***"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, b := do(t, "POST", hs.URL+"/init", "", strings.NewReader(tt.body))
			if res.StatusCode != 400 {
				t.Fatalf("status = %d (%s), want 400", res.StatusCode, b)
			}
		})
	}
	if s.Session().Token() != "" || !sys.clock.IsZero() {
		t.Error("a refused /init changed state")
	}
	// An empty body is a valid no-op.
	if res, _ := do(t, "POST", hs.URL+"/init", "", nil); res.StatusCode != 204 {
		t.Errorf("empty init: %d, want 204", res.StatusCode)
	}
}

func TestParseTimestamp(t *testing.T) {
	want := time.Date(2030, 1, 2, 3, 4, 5, 500_000_000, time.UTC)
	tests := []struct {
		raw string
		ok  bool
	}{
		{`"2030-01-02T03:04:05.5Z"`, true},
		{`"2030-01-02T04:04:05.5+01:00"`, true},
		{`1893553445.5`, true},
		{`"1893553445.5"`, true},
		{`"soon"`, false},
		{`true`, false},
		{`0`, false},
	}
	for _, tt := range tests {
		got, err := parseTimestamp(json.RawMessage(tt.raw))
		if (err == nil) != tt.ok || (tt.ok && !got.Equal(want)) {
			t.Errorf("parseTimestamp(%s) = %v, %v; want ok=%v %v", tt.raw, got, err, tt.ok, want)
		}
	}
}

func TestMetricsEndpoint(t *testing.T) {
	_, hs, _ := newTestServer(t, Config{})
	res, b := do(t, "GET", hs.URL+"/metrics", "", nil)
	if res.StatusCode != 200 {
		t.Fatalf("status %d", res.StatusCode)
	}
	var m map[string]float64
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ts", "cpu_count", "cpu_used_pct", "mem_total", "mem_used", "mem_cache", "disk_used", "disk_total"} {
		if _, ok := m[k]; !ok {
			t.Errorf("metrics lack %q: %s", k, b)
		}
	}
	if int(m["cpu_count"]) != runtime.NumCPU() || m["mem_total"] <= 0 || m["mem_used"] > m["mem_total"] || m["disk_total"] <= 0 {
		t.Errorf("implausible metrics: %s", b)
	}
	if d := time.Since(time.Unix(int64(m["ts"]), 0)); d < -time.Minute || d > time.Minute {
		t.Errorf("ts off by %v", d)
	}
}

func TestServeH2CAndShutdown(t *testing.T) {
	s, err := New(Config{System: &fakeSystem{}, Keepalive: time.Hour, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	base := "http://" + ln.Addr().String()

	h2 := &http.Client{Transport: &http2.Transport{
		AllowHTTP:      true,
		DialTLSContext: func(ctx context.Context, n, a string, _ *tls.Config) (net.Conn, error) { return net.Dial(n, a) },
	}}
	res, err := h2.Get(base + "/health")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 204 || res.ProtoMajor != 2 || res.Header.Get("X-Envd-Version") != Version {
		t.Fatalf("h2c health: %d proto %d version %q", res.StatusCode, res.ProtoMajor, res.Header.Get("X-Envd-Version"))
	}

	// An open watch stream must not hold up shutdown.
	fc := filesystemconnect.NewFilesystemClient(http.DefaultClient, base, connect.WithProtoJSON())
	ws, err := fc.WatchDir(context.Background(), connect.NewRequest(&fspb.WatchDirRequest{Path: t.TempDir()}))
	if err != nil {
		t.Fatal(err)
	}
	if !ws.Receive() {
		t.Fatalf("no start: %v", ws.Err())
	}
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(8 * time.Second):
		t.Fatal("Serve did not return")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %v", d)
	}
	if _, err := http.Get(base + "/health"); err == nil {
		t.Error("still serving after shutdown")
	}
}

// An upload goes through a temporary file; a watcher sees only the target
// being created and written, as with E2B's envd.
func TestWatchSeesUploadsAsWrites(t *testing.T) {
	_, hs, _ := newTestServer(t, Config{})
	dir := t.TempDir()
	fc := filesystemconnect.NewFilesystemClient(hs.Client(), hs.URL, connect.WithProtoJSON())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ws, err := fc.WatchDir(ctx, connect.NewRequest(&fspb.WatchDirRequest{Path: dir, Recursive: true}))
	if err != nil {
		t.Fatal(err)
	}
	if !ws.Receive() || ws.Msg().GetStart() == nil {
		t.Fatalf("no start event: %v", ws.Err())
	}
	events := make(chan string, 100)
	go func() {
		for ws.Receive() {
			if ev := ws.Msg().GetFilesystem(); ev != nil {
				events <- ev.GetType().String() + " " + ev.GetName()
			}
		}
		close(events)
	}()

	for _, p := range []string{"new.txt", "new.txt", "sub/deep.txt"} {
		res, b := do(t, "POST", hs.URL+"/files?"+url.Values{"path": {filepath.Join(dir, p)}}.Encode(), "", strings.NewReader("x"))
		if res.StatusCode != 200 {
			t.Fatalf("upload: %d %s", res.StatusCode, b)
		}
	}
	want := map[string]bool{"EVENT_TYPE_CREATE new.txt": false, "EVENT_TYPE_WRITE new.txt": false,
		"EVENT_TYPE_CREATE sub": false, "EVENT_TYPE_WRITE sub/deep.txt": false}
	timeout := time.After(5 * time.Second)
	for missing := len(want); missing > 0; {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("stream ended: %v", ws.Err())
			}
			if strings.Contains(ev, "envd-upload") {
				t.Errorf("temporary file visible: %s", ev)
			}
			if seen, ok := want[ev]; ok && !seen {
				want[ev] = true
				missing--
			}
		case <-timeout:
			t.Fatalf("missing events: %v", want)
		}
	}
}
