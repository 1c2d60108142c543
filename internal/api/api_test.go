package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1/orchestratorv1connect"
	"github.com/cocoon-run/cocoon/internal/nodeauth"
	"github.com/cocoon-run/cocoon/internal/store"

	orchestratorv1 "github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1"
)

const nodeToken = "node-secret"

// env is one api over a SQLite store and a fake node.
type env struct {
	t      *testing.T
	dbPath string
	store  store.Store
	node   *fakeNode
	nodes  NodeSet
	srv    *Server
	http   *httptest.Server
	keyA   string // team A's key
	keyB   string // team B's key
	teamA  string
}

func newEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{t: t, dbPath: filepath.Join(t.TempDir(), "cocoon.db"), node: newFakeNode(nodeToken)}
	st, err := store.Open(ctx, e.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e.store = st

	// The base template belongs to a system team and is public.
	mustTeam(t, st, "system")
	if err := st.CreateTemplate(ctx, store.Template{ID: "base", TeamID: "system", Name: "base", Aliases: []string{"base"}, Public: true, CPUCount: 2, MemoryMB: 512, DiskMB: 2048, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateBuild(ctx, store.TemplateBuild{ID: "b1", TemplateID: "base", Status: store.BuildReady, ArtifactDir: "/t/base/b1", EnvdVersion: EnvdVersion, CreatedAt: time.Now(), FinishedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	e.teamA = "team-a"
	mustTeam(t, st, e.teamA)
	mustTeam(t, st, "team-b")
	e.keyA = mustKey(t, st, e.teamA)
	e.keyB = mustKey(t, st, "team-b")

	_, h := orchestratorv1connect.NewOrchestratorServiceHandler(e.node)
	mux := http.NewServeMux()
	mux.Handle("/", h)
	nodeSrv := httptest.NewServer(mux)
	t.Cleanup(nodeSrv.Close)
	e.nodes = NewStaticNodes(map[string]orchestratorv1connect.OrchestratorServiceClient{
		"node1": nodeauth.NewClient(nodeSrv.Client(), nodeSrv.URL, nodeToken),
	})
	e.start(cfg)
	return e
}

// start (re)creates the Server over the same store, as an api restart does.
func (e *env) start(cfg Config) {
	e.t.Helper()
	if e.http != nil {
		e.http.Close()
	}
	srv, err := New(cfg, e.store, e.nodes, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		e.t.Fatal(err)
	}
	e.srv = srv
	e.http = httptest.NewServer(srv.Handler())
	e.t.Cleanup(e.http.Close)
}

// run starts the background loops until the test ends.
func (e *env) run() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.srv.Run(ctx); close(done) }()
	e.t.Cleanup(func() { cancel(); <-done })
}

func mustTeam(t *testing.T, st store.Store, id string) {
	t.Helper()
	if err := st.CreateTeam(context.Background(), store.Team{ID: id, Name: id, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
}

func mustKey(t *testing.T, st store.Store, team string) string {
	t.Helper()
	key, hash, prefix := store.GenerateAPIKey()
	if err := st.CreateAPIKey(context.Background(), store.APIKey{ID: "k-" + team, TeamID: team, Hash: hash, Prefix: prefix, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return key
}

type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// errBody checks that r is an E2B error with status want and returns its message.
func (r reply) errBody(t *testing.T, want int) string {
	t.Helper()
	if r.status != want {
		t.Fatalf("status = %d, want %d; body %s", r.status, want, r.body)
	}
	var e errorBody
	r.decode(t, &e)
	if e.Code != want || e.Message == "" {
		t.Fatalf("error body = %+v, want code %d and a message", e, want)
	}
	return e.Message
}

func (e *env) do(key, method, path string, body any) reply {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.http.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("X-API-KEY", key)
	}
	resp, err := e.http.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, header: resp.Header, body: b}
}

func (e *env) create(key string, body map[string]any) sandboxJSON {
	e.t.Helper()
	if body == nil {
		body = map[string]any{}
	}
	if _, ok := body["templateID"]; !ok {
		body["templateID"] = "base"
	}
	r := e.do(key, "POST", "/v2/sandboxes", body)
	if r.status != http.StatusCreated {
		e.t.Fatalf("create: status %d: %s", r.status, r.body)
	}
	var sb sandboxJSON
	r.decode(e.t, &sb)
	return sb
}

func (e *env) info(key, id string) (sandboxDetailJSON, int) {
	e.t.Helper()
	r := e.do(key, "GET", "/sandboxes/"+id, nil)
	var d sandboxDetailJSON
	if r.status == http.StatusOK {
		r.decode(e.t, &d)
	}
	return d, r.status
}

func TestSandboxLifecycle(t *testing.T) {
	e := newEnv(t, Config{Domain: "sb.example.com"})
	sb := e.create(e.keyA, map[string]any{"timeout": 60, "metadata": map[string]string{"user": "a b", "app": "x"}, "envVars": map[string]string{"A": "1"}})

	if len(sb.SandboxID) != 20 || strings.ContainsAny(sb.SandboxID, "-ABCDEFGHIJKLMNOPQRSTUVWXYZ_") {
		t.Errorf("sandboxID = %q, want 20 lowercase alphanumerics", sb.SandboxID)
	}
	if sb.EnvdVersion != "0.6.4" || sb.TemplateID != "base" || sb.Domain == nil || *sb.Domain != "sb.example.com" {
		t.Errorf("create reply = %+v", sb)
	}
	if sb.EnvdAccessToken == "" || sb.TrafficAccessToken == nil || *sb.TrafficAccessToken == "" || sb.EnvdAccessToken == *sb.TrafficAccessToken || strings.Contains(sb.EnvdAccessToken, sb.SandboxID) {
		t.Errorf("tokens: envd %q traffic %v", sb.EnvdAccessToken, sb.TrafficAccessToken)
	}
	if got := e.node.state(sb.SandboxID); got != orchestratorv1.State_STATE_RUNNING {
		t.Fatalf("node state = %v, want running", got)
	}

	d, status := e.info(e.keyA, sb.SandboxID)
	if status != 200 || d.State != "running" || d.Metadata["user"] != "a b" || d.CPUCount != 2 || d.MemoryMB != 512 || d.Lifecycle == nil || d.Lifecycle.OnTimeout != "kill" {
		t.Fatalf("info = %d %+v", status, d)
	}
	if got := d.EndAt.Sub(d.StartedAt); got < 59*time.Second || got > 61*time.Second {
		t.Errorf("endAt - startedAt = %v, want 60s", got)
	}

	// setTimeout moves the deadline from now.
	if r := e.do(e.keyA, "POST", "/sandboxes/"+sb.SandboxID+"/timeout", map[string]int{"timeout": 3600}); r.status != 204 || len(r.body) != 0 {
		t.Fatalf("timeout: %d %q", r.status, r.body)
	}
	d2, _ := e.info(e.keyA, sb.SandboxID)
	if got := time.Until(d2.EndAt); got < 3590*time.Second || got > 3601*time.Second {
		t.Errorf("after setTimeout endAt in %v, want ~1h", got)
	}

	// pause, and pause again is a conflict.
	if r := e.do(e.keyA, "POST", "/sandboxes/"+sb.SandboxID+"/pause", map[string]any{}); r.status != 204 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	if d, _ := e.info(e.keyA, sb.SandboxID); d.State != "paused" {
		t.Errorf("state after pause = %q", d.State)
	}
	if got := e.node.state(sb.SandboxID); got != orchestratorv1.State_STATE_PAUSED {
		t.Errorf("node state after pause = %v", got)
	}
	e.do(e.keyA, "POST", "/sandboxes/"+sb.SandboxID+"/pause", nil).errBody(t, 409)

	// connect resumes (201), then is a plain connect (200) with the same tokens.
	r := e.do(e.keyA, "POST", "/v2/sandboxes/"+sb.SandboxID+"/connect", map[string]int{"timeout": 30})
	if r.status != 201 {
		t.Fatalf("connect paused: %d %s", r.status, r.body)
	}
	var c sandboxJSON
	r.decode(t, &c)
	if c.SandboxID != sb.SandboxID || c.EnvdAccessToken != sb.EnvdAccessToken {
		t.Errorf("connect reply = %+v", c)
	}
	if d, _ := e.info(e.keyA, sb.SandboxID); d.State != "running" {
		t.Errorf("state after connect = %q", d.State)
	}
	if r := e.do(e.keyA, "POST", "/v2/sandboxes/"+sb.SandboxID+"/connect", map[string]int{"timeout": 10}); r.status != 200 {
		t.Fatalf("connect running: %d %s", r.status, r.body)
	}
	// Connect never shortens the deadline (30 s from the resume).
	if d, _ := e.info(e.keyA, sb.SandboxID); time.Until(d.EndAt) < 20*time.Second {
		t.Errorf("connect shortened the deadline to %v", time.Until(d.EndAt))
	}
	e.do(e.keyA, "POST", "/sandboxes/"+sb.SandboxID+"/resume", map[string]int{}).errBody(t, 409)

	// kill, then everything is 404.
	if r := e.do(e.keyA, "DELETE", "/sandboxes/"+sb.SandboxID, nil); r.status != 204 || len(r.body) != 0 {
		t.Fatalf("kill: %d %q", r.status, r.body)
	}
	if got := e.node.state(sb.SandboxID); got != orchestratorv1.State_STATE_UNSPECIFIED {
		t.Errorf("node still has the sandbox: %v", got)
	}
	e.do(e.keyA, "GET", "/sandboxes/"+sb.SandboxID, nil).errBody(t, 404)
	e.do(e.keyA, "DELETE", "/sandboxes/"+sb.SandboxID, nil).errBody(t, 404)
	e.do(e.keyA, "POST", "/v2/sandboxes/"+sb.SandboxID+"/connect", map[string]int{}).errBody(t, 404)
	if e.node.badAuth != 0 {
		t.Errorf("%d node calls without the bearer token", e.node.badAuth)
	}
}

func TestListFilterAndPagination(t *testing.T) {
	e := newEnv(t, Config{})
	var ids []string
	for i := range 5 {
		md := map[string]string{"app": "web", "n": strconv.Itoa(i)}
		if i == 4 {
			md["app"] = "other"
		}
		ids = append(ids, e.create(e.keyA, map[string]any{"metadata": md}).SandboxID)
	}
	e.create(e.keyB, map[string]any{"metadata": map[string]string{"app": "web"}})
	if r := e.do(e.keyA, "POST", "/sandboxes/"+ids[0]+"/pause", nil); r.status != 204 {
		t.Fatalf("pause: %d", r.status)
	}

	// The SDK sends metadata as an encoded query string, encoded once more.
	inner := url.Values{url.QueryEscape("app"): {url.QueryEscape("web")}}.Encode()
	var got []string
	next := ""
	pages := 0
	for {
		q := url.Values{"metadata": {inner}, "limit": {"2"}, "state": {"running,paused"}}
		if next != "" {
			q.Set("nextToken", next)
		}
		r := e.do(e.keyA, "GET", "/v2/sandboxes?"+q.Encode(), nil)
		if r.status != 200 {
			t.Fatalf("list: %d %s", r.status, r.body)
		}
		var page []listedSandboxJSON
		r.decode(t, &page)
		if len(page) > 2 {
			t.Fatalf("page of %d, limit 2", len(page))
		}
		for _, sb := range page {
			got = append(got, sb.SandboxID)
		}
		pages++
		next = r.header.Get("X-Next-Token")
		if next == "" {
			break
		}
	}
	want := slices.Clone(ids[:4])
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) || pages != 2 {
		t.Errorf("listed %v in %d pages, want %v in 2", got, pages, want)
	}

	tests := []struct {
		name, path string
		want       int
	}{
		{"paused only", "/v2/sandboxes?state=paused", 1},
		{"running only", "/v2/sandboxes?state=running", 4},
		{"all states", "/v2/sandboxes", 5},
		{"v1 running only", "/sandboxes", 4},
		{"v1 with metadata", "/sandboxes?metadata=" + url.QueryEscape("app=other"), 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do(e.keyA, "GET", tt.path, nil)
			var page []listedSandboxJSON
			r.decode(t, &page)
			if r.status != 200 || len(page) != tt.want {
				t.Errorf("%s: status %d, %d sandboxes, want %d", tt.path, r.status, len(page), tt.want)
			}
		})
	}
	e.do(e.keyA, "GET", "/v2/sandboxes?state=sleeping", nil).errBody(t, 400)
}

func TestTenancy(t *testing.T) {
	e := newEnv(t, Config{})
	sb := e.create(e.keyA, nil)
	for _, c := range []struct{ method, path string }{
		{"GET", "/sandboxes/" + sb.SandboxID},
		{"DELETE", "/sandboxes/" + sb.SandboxID},
		{"POST", "/sandboxes/" + sb.SandboxID + "/pause"},
		{"POST", "/sandboxes/" + sb.SandboxID + "/timeout"},
		{"POST", "/v2/sandboxes/" + sb.SandboxID + "/connect"},
		{"GET", "/sandboxes/" + sb.SandboxID + "/metrics"},
		{"GET", "/sandboxes/" + sb.SandboxID + "/logs"},
	} {
		var body any
		if c.method == "POST" {
			body = map[string]int{"timeout": 10}
		}
		e.do(e.keyB, c.method, c.path, body).errBody(t, 404)
	}
	r := e.do(e.keyB, "GET", "/v2/sandboxes", nil)
	if r.status != 200 || strings.TrimSpace(string(r.body)) != "[]" {
		t.Errorf("team B lists %d %s, want []", r.status, r.body)
	}
	if _, status := e.info(e.keyA, sb.SandboxID); status != 200 {
		t.Errorf("team A lost its sandbox: %d", status)
	}
}

func TestAuth(t *testing.T) {
	e := newEnv(t, Config{AdminToken: "admintok"})
	e.do("", "GET", "/v2/sandboxes", nil).errBody(t, 401)
	e.do("e2b_wrong", "GET", "/v2/sandboxes", nil).errBody(t, 401)
	e.do("", "POST", "/admin/teams", map[string]string{"name": "x"}).errBody(t, 401)
	e.do(e.keyA, "GET", "/admin/teams", nil).errBody(t, 401)
	if r := e.do("", "GET", "/health", nil); r.status != 200 {
		t.Errorf("health: %d", r.status)
	}
	if r := e.do("", "GET", "/openapi.yaml", nil); r.status != 200 || !bytes.Contains(r.body, []byte("openapi: 3")) {
		t.Errorf("openapi.yaml: %d", r.status)
	}
	e.do(e.keyA, "GET", "/no/such/path", nil).errBody(t, 404)
}

func TestAdmin(t *testing.T) {
	e := newEnv(t, Config{AdminToken: "admintok"})
	admin := func(method, path string, body any) reply {
		req, _ := http.NewRequest(method, e.http.URL+path, nil)
		if body != nil {
			j, _ := json.Marshal(body)
			req, _ = http.NewRequest(method, e.http.URL+path, bytes.NewReader(j))
		}
		req.Header.Set("Authorization", "Bearer admintok")
		resp, err := e.http.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return reply{status: resp.StatusCode, header: resp.Header, body: b}
	}
	r := admin("POST", "/admin/teams", map[string]string{"name": "acme"})
	var team teamJSON
	r.decode(t, &team)
	if r.status != 201 || team.TeamID == "" || team.Name != "acme" {
		t.Fatalf("create team: %d %s", r.status, r.body)
	}
	r = admin("POST", "/admin/teams/"+team.TeamID+"/keys", map[string]string{"name": "ci"})
	var key keyJSON
	r.decode(t, &key)
	if r.status != 201 || !strings.HasPrefix(key.Key, "e2b_") || !strings.HasPrefix(key.Key, key.Prefix) {
		t.Fatalf("create key: %d %s", r.status, r.body)
	}
	if r := e.do(key.Key, "GET", "/v2/sandboxes", nil); r.status != 200 {
		t.Fatalf("new key rejected: %d %s", r.status, r.body)
	}
	r = admin("GET", "/admin/teams/"+team.TeamID+"/keys", nil)
	if r.status != 200 || bytes.Contains(r.body, []byte(key.Key)) || !bytes.Contains(r.body, []byte(key.KeyID)) {
		t.Fatalf("list keys: %d %s", r.status, r.body)
	}
	if r := admin("DELETE", "/admin/keys/"+key.KeyID, nil); r.status != 204 {
		t.Fatalf("delete key: %d %s", r.status, r.body)
	}
	e.do(key.Key, "GET", "/v2/sandboxes", nil).errBody(t, 401)
	admin("DELETE", "/admin/keys/"+key.KeyID, nil).errBody(t, 404)
	admin("GET", "/admin/teams/nope/keys", nil).errBody(t, 404)
	if r := admin("GET", "/admin/teams", nil); r.status != 200 || !bytes.Contains(r.body, []byte(`"acme"`)) {
		t.Errorf("list teams: %d %s", r.status, r.body)
	}
}

func TestValidation(t *testing.T) {
	e := newEnv(t, Config{BodyLimit: 1024})
	tests := []struct {
		name    string
		body    string
		status  int
		mention string
	}{
		{"malformed JSON", `{"templateID": "base",`, 400, "body"},
		{"timeout of wrong type", `{"templateID": "base", "timeout": "long"}`, 400, "timeout"},
		{"metadata of wrong type", `{"templateID": "base", "metadata": {"a": 1}}`, 400, "metadata"},
		{"missing templateID", `{"timeout": 10}`, 400, "templateID"},
		{"unknown template", `{"templateID": "nope"}`, 404, "nope"},
		{"unknown fields tolerated", `{"templateID": "base", "mcp": null, "volumeMounts": [], "somethingNew": {"x": 1}}`, 201, ""},
		{"oversized body", `{"templateID": "base", "metadata": {"x": "` + strings.Repeat("a", 2048) + `"}}`, 413, "larger"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do(e.keyA, "POST", "/v2/sandboxes", tt.body)
			if tt.status == 201 {
				if r.status != 201 {
					t.Fatalf("status %d: %s", r.status, r.body)
				}
				return
			}
			if msg := r.errBody(t, tt.status); !strings.Contains(msg, tt.mention) {
				t.Errorf("message %q does not mention %q", msg, tt.mention)
			}
		})
	}
	sb := e.create(e.keyA, nil)
	e.do(e.keyA, "POST", "/sandboxes/"+sb.SandboxID+"/timeout", `{"timeout": -5}`).errBody(t, 400)
	e.do(e.keyA, "GET", "/sandboxes/"+sb.SandboxID+"/metrics?start=yesterday", nil).errBody(t, 400)
}

func TestTimeoutClamp(t *testing.T) {
	e := newEnv(t, Config{MaxTimeout: time.Hour})
	sb := e.create(e.keyA, map[string]any{"timeout": 86400})
	d, _ := e.info(e.keyA, sb.SandboxID)
	if got := d.EndAt.Sub(d.StartedAt); got != time.Hour {
		t.Errorf("timeout = %v, want clamped to 1h", got)
	}
	sb = e.create(e.keyA, nil)
	d, _ = e.info(e.keyA, sb.SandboxID)
	if got := d.EndAt.Sub(d.StartedAt); got != 300*time.Second {
		t.Errorf("default timeout = %v, want 300s", got)
	}
}

func TestRateLimit(t *testing.T) {
	e := newEnv(t, Config{RateLimit: 0.5, RateBurst: 3})
	for i := range 3 {
		if r := e.do(e.keyA, "GET", "/v2/sandboxes", nil); r.status != 200 {
			t.Fatalf("request %d: %d", i, r.status)
		}
	}
	r := e.do(e.keyA, "GET", "/v2/sandboxes", nil)
	r.errBody(t, 429)
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 || ra > 2 {
		t.Errorf("Retry-After = %q, want 1-2 s", r.header.Get("Retry-After"))
	}
	// Buckets are per team: team B is unaffected, a second key of team A
	// (issue 18: before, each key had its own bucket) is not.
	if r := e.do(e.keyB, "GET", "/v2/sandboxes", nil); r.status != 200 {
		t.Errorf("other team limited: %d", r.status)
	}
	key, hash, prefix := store.GenerateAPIKey()
	if err := e.store.CreateAPIKey(context.Background(), store.APIKey{ID: "k-a2", TeamID: e.teamA, Hash: hash, Prefix: prefix, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if r := e.do(key, "GET", "/v2/sandboxes", nil); r.status != 429 {
		t.Errorf("team A's second key: %d, want 429 (the team's bucket is empty)", r.status)
	}
}

// eventually polls cond for up to 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestExpiry(t *testing.T) {
	e := newEnv(t, Config{LifecycleInterval: 20 * time.Millisecond})
	killed := e.create(e.keyA, map[string]any{"timeout": 1})
	paused := e.create(e.keyA, map[string]any{"timeout": 1, "autoPause": true})
	kept := e.create(e.keyA, map[string]any{"timeout": 1})
	if r := e.do(e.keyA, "POST", "/sandboxes/"+kept.SandboxID+"/timeout", map[string]int{"timeout": 600}); r.status != 204 {
		t.Fatalf("timeout: %d", r.status)
	}
	e.run()
	eventually(t, "expired sandbox killed", func() bool {
		_, status := e.info(e.keyA, killed.SandboxID)
		return status == 404 && e.node.state(killed.SandboxID) == orchestratorv1.State_STATE_UNSPECIFIED
	})
	eventually(t, "autoPause sandbox paused", func() bool {
		d, _ := e.info(e.keyA, paused.SandboxID)
		return d.State == "paused" && e.node.state(paused.SandboxID) == orchestratorv1.State_STATE_PAUSED
	})
	if d, status := e.info(e.keyA, kept.SandboxID); status != 200 || d.State != "running" {
		t.Errorf("extended sandbox: %d %q", status, d.State)
	}
}

func TestRestart(t *testing.T) {
	e := newEnv(t, Config{LifecycleInterval: 20 * time.Millisecond})
	short := e.create(e.keyA, map[string]any{"timeout": 1})
	long := e.create(e.keyA, map[string]any{"timeout": 600})
	lost := e.create(e.keyA, map[string]any{"timeout": 600})
	e.node.drop(lost.SandboxID)                                                                         // the node lost it while the api was down
	e.node.put(&orchestratorv1.Sandbox{SandboxId: "orphan", State: orchestratorv1.State_STATE_RUNNING}) // and runs one nobody knows

	// A new api process over the same store.
	e.start(Config{LifecycleInterval: 20 * time.Millisecond})
	r := e.do(e.keyA, "GET", "/v2/sandboxes", nil)
	var page []listedSandboxJSON
	r.decode(t, &page)
	if len(page) != 3 {
		t.Fatalf("after restart listed %d sandboxes, want 3", len(page))
	}
	e.run()
	eventually(t, "expiry enforced after restart", func() bool {
		_, status := e.info(e.keyA, short.SandboxID)
		return status == 404
	})
	eventually(t, "lost sandbox marked dead", func() bool {
		_, status := e.info(e.keyA, lost.SandboxID)
		return status == 404
	})
	eventually(t, "orphan killed", func() bool { return e.node.state("orphan") == orchestratorv1.State_STATE_UNSPECIFIED })
	if _, status := e.info(e.keyA, long.SandboxID); status != 200 {
		t.Errorf("long-lived sandbox: %d", status)
	}
	sb, err := e.store.GetSandbox(context.Background(), lost.SandboxID)
	if err != nil || sb.State != store.StateDead {
		t.Errorf("lost sandbox state = %q, %v; want dead", sb.State, err)
	}
}

// TestReconcileRacingCreate: a sandbox that finishes starting while the
// node's list is on its way is not declared dead by that round.
func TestReconcileRacingCreate(t *testing.T) {
	e := newEnv(t, Config{LifecycleInterval: time.Hour, ReconcileInterval: time.Hour})
	var racer sandboxJSON
	e.node.mu.Lock()
	e.node.afterList = func() {
		e.node.mu.Lock()
		e.node.afterList = nil
		e.node.mu.Unlock()
		racer = e.create(e.keyA, nil)
	}
	e.node.mu.Unlock()
	if err := e.srv.reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if racer.SandboxID == "" {
		t.Fatal("the node was not listed")
	}
	sb, err := e.store.GetSandbox(context.Background(), racer.SandboxID)
	if err != nil || sb.State != store.StateRunning {
		t.Errorf("sandbox created during the round: state %q, %v; want running", sb.State, err)
	}
	if got := e.node.state(racer.SandboxID); got != orchestratorv1.State_STATE_RUNNING {
		t.Errorf("on the node: %v, want running", got)
	}
	// The next round sees it on both sides and leaves it.
	if err := e.srv.reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, status := e.info(e.keyA, racer.SandboxID); status != 200 {
		t.Errorf("after a second round: %d, want 200", status)
	}
}

func TestMetricsAndLogs(t *testing.T) {
	e := newEnv(t, Config{MetricsInterval: 20 * time.Millisecond, LifecycleInterval: time.Hour})
	sb := e.create(e.keyA, nil)
	e.run()
	var ms []metricJSON
	eventually(t, "metrics sampled", func() bool {
		r := e.do(e.keyA, "GET", "/sandboxes/"+sb.SandboxID+"/metrics", nil)
		ms = nil
		r.decode(t, &ms)
		return r.status == 200 && len(ms) >= 2
	})
	if m := ms[0]; m.CPUCount != 2 || m.MemTotal != 512<<20 || m.TimestampUnix != m.Timestamp.Unix() {
		t.Errorf("metric = %+v", m)
	}
	future := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)
	r := e.do(e.keyA, "GET", "/sandboxes/"+sb.SandboxID+"/metrics?start="+future, nil)
	if r.status != 200 || strings.TrimSpace(string(r.body)) != "[]" {
		t.Errorf("metrics from the future: %d %s", r.status, r.body)
	}
	r = e.do(e.keyA, "GET", "/sandboxes/metrics?sandbox_ids="+sb.SandboxID+",unknown", nil)
	var many struct {
		Sandboxes map[string]metricJSON `json:"sandboxes"`
	}
	r.decode(t, &many)
	if _, ok := many.Sandboxes[sb.SandboxID]; r.status != 200 || !ok || len(many.Sandboxes) != 1 {
		t.Errorf("sandboxes metrics: %d %s", r.status, r.body)
	}

	r = e.do(e.keyA, "GET", "/sandboxes/"+sb.SandboxID+"/logs", nil)
	var logs struct {
		Logs       []logJSON      `json:"logs"`
		LogEntries []logEntryJSON `json:"logEntries"`
	}
	r.decode(t, &logs)
	if r.status != 200 || len(logs.Logs) != 4 || !logs.Logs[0].Timestamp.Equal(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)) || len(logs.LogEntries) != 4 || logs.LogEntries[1].Message != "envd ready" {
		t.Fatalf("logs: %d %s", r.status, r.body)
	}
	// Every line is a JSON object with a level: E2B's CLI parses each
	// (`e2b sandbox logs` crashed on slog's text format).
	wantLevels := []string{"info", "info", "warn", "error"}
	for i, l := range logs.Logs {
		var obj map[string]any
		if err := json.Unmarshal([]byte(l.Line), &obj); err != nil || obj["level"] == nil {
			t.Errorf("line %d is not a JSON object with a level: %q (%v)", i, l.Line, err)
		}
		if got := logs.LogEntries[i].Level; got != wantLevels[i] {
			t.Errorf("entry %d level = %q, want %q", i, got, wantLevels[i])
		}
	}
	if e := logs.LogEntries[2]; e.Message != "disk low" || e.Fields["logger"] != "processSvc" || e.Fields["pid"] != "7" ||
		!e.Timestamp.Equal(time.Date(2025, 1, 2, 3, 4, 6, 5e8, time.UTC)) {
		t.Errorf("envd's JSON entry = %+v", e)
	}
	if !strings.Contains(logs.Logs[0].Line, `"booting"`) {
		t.Errorf("a plain line keeps its text: %q", logs.Logs[0].Line)
	}
}

func TestTemplates(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	if err := e.store.CreateTemplate(ctx, store.Template{ID: "tpla", TeamID: e.teamA, Name: "mine", Aliases: []string{"mine"}, CPUCount: 1, MemoryMB: 256, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	ids := func(key string) []string {
		r := e.do(key, "GET", "/templates", nil)
		var ts []templateJSON
		r.decode(t, &ts)
		var out []string
		for _, tpl := range ts {
			out = append(out, tpl.TemplateID)
		}
		slices.Sort(out)
		return out
	}
	if got := ids(e.keyA); !slices.Equal(got, []string{"base", "tpla"}) {
		t.Errorf("team A templates = %v", got)
	}
	if got := ids(e.keyB); !slices.Equal(got, []string{"base"}) {
		t.Errorf("team B templates = %v", got)
	}
	e.do(e.keyB, "GET", "/templates/tpla", nil).errBody(t, 404)
	e.do(e.keyB, "DELETE", "/templates/tpla", nil).errBody(t, 404)
	e.do(e.keyB, "DELETE", "/templates/base", nil).errBody(t, 404)
	if r := e.do(e.keyA, "GET", "/templates/base", nil); r.status != 200 || !bytes.Contains(r.body, []byte(`"b1"`)) {
		t.Errorf("get base: %d %s", r.status, r.body)
	}
	if r := e.do(e.keyA, "DELETE", "/templates/mine", nil); r.status != 204 {
		t.Errorf("delete: %d %s", r.status, r.body)
	}
	if got := ids(e.keyA); !slices.Equal(got, []string{"base"}) {
		t.Errorf("after delete team A templates = %v", got)
	}
}

// TestRoutesMatchOpenAPI checks that every route is documented and every
// documented operation is served.
func TestRoutesMatchOpenAPI(t *testing.T) {
	e := newEnv(t, Config{})
	served := map[string]bool{}
	for _, r := range e.srv.routes {
		served[r.method+" "+r.path] = true
	}
	documented := map[string]bool{}
	for path, item := range e.srv.doc.Paths.Map() {
		for method := range item.Operations() {
			documented[method+" "+path] = true
		}
	}
	for k := range served {
		if !documented[k] {
			t.Errorf("route %s is not in api/openapi.yaml", k)
		}
	}
	for k := range documented {
		if !served[k] {
			t.Errorf("api/openapi.yaml documents %s but no route serves it", k)
		}
	}
	if len(served) < 20 {
		t.Errorf("only %d routes", len(served))
	}
}

func TestParseMetadataQuery(t *testing.T) {
	tests := []struct {
		raw  string
		want map[string]string
	}{
		{"", nil},
		{"user=abc&app=prod", map[string]string{"user": "abc", "app": "prod"}},
		{"us%2520er=a%2520b", map[string]string{"us er": "a b"}},
		{"k=v%3Dw", map[string]string{"k": "v=w"}},
	}
	for _, tt := range tests {
		got, err := parseMetadataQuery(tt.raw)
		if err != nil {
			t.Errorf("%q: %v", tt.raw, err)
			continue
		}
		if len(got) != len(tt.want) {
			t.Errorf("%q: got %v, want %v", tt.raw, got, tt.want)
		}
		for k, v := range tt.want {
			if got[k] != v {
				t.Errorf("%q: got %v, want %v", tt.raw, got, tt.want)
			}
		}
	}
}

func TestRateLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newRateLimiter(1, 2, func() time.Time { return now })
	steps := []struct {
		advance time.Duration
		key     string
		want    bool
	}{
		{0, "a", true}, {0, "a", true}, {0, "a", false}, {0, "b", true},
		{500 * time.Millisecond, "a", false}, {500 * time.Millisecond, "a", true}, {0, "a", false},
		{10 * time.Second, "a", true}, {0, "a", true}, {0, "a", false},
	}
	for i, s := range steps {
		now = now.Add(s.advance)
		if got, _ := l.allow(s.key); got != s.want {
			t.Errorf("step %d (%s): allow = %v, want %v", i, s.key, got, s.want)
		}
	}
}
