package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/internal/api"
	"github.com/cocoon-run/cocoon/internal/store"
)

type clock struct{ t atomic.Int64 }

func (c *clock) now() time.Time      { return time.Unix(0, c.t.Load()) }
func (c *clock) add(d time.Duration) { c.t.Add(int64(d)) }
func newClock() *clock {
	c := &clock{}
	c.t.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
func beat(id string) func(context.Context) (Heartbeat, error) {
	return func(context.Context) (Heartbeat, error) {
		return Heartbeat{ID: id, URL: "http://" + id + ".invalid:3002", Runtimes: []string{"gvisor"},
			VCPUs: 4, MemoryMB: 8192, DiskMB: 100000}, nil
	}
}

type testFleet struct {
	st   store.Store
	reg  *Registry
	srv  *httptest.Server
	clk  *clock
	mu   sync.Mutex
	lost []string
	up   []string
}

func newTestFleet(t *testing.T) *testFleet {
	t.Helper()
	st, err := store.Open(t.Context(), "sqlite://"+filepath.Join(t.TempDir(), "cocoon.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &testFleet{st: st, clk: newClock()}
	f.reg = New(Config{Store: st, NodeToken: "node-secret", AdminToken: "admin-secret", Logger: quiet(), Now: f.clk.now,
		OnLost: func(id, reason string) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.lost = append(f.lost, id+": "+reason)
		},
		OnNodeUp: func(id string) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.up = append(f.up, id)
		},
	})
	f.srv = httptest.NewServer(f.reg.Handler())
	t.Cleanup(f.srv.Close)
	return f
}

func (f *testFleet) agent(id string) *Agent {
	return NewAgent(AgentConfig{ControlURL: f.srv.URL, NodeToken: "node-secret", Beat: beat(id), Logger: quiet()})
}

func (f *testFleet) beat(t *testing.T, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if _, err := f.agent(id).Beat(t.Context()); err != nil {
			t.Fatalf("beat %s: %v", id, err)
		}
	}
	if err := f.reg.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func (f *testFleet) sandbox(t *testing.T, id, node string, state store.SandboxState) {
	t.Helper()
	ctx := t.Context()
	if _, err := f.st.GetTeam(ctx, "team"); err != nil {
		if err := f.st.CreateTeam(ctx, store.Team{ID: "team", Name: "team", CreatedAt: f.clk.now()}); err != nil {
			t.Fatal(err)
		}
	}
	sb := store.Sandbox{ID: id, TeamID: "team", NodeID: node, TemplateID: "base", BuildID: "b", Runtime: "gvisor",
		State: state, StartedAt: f.clk.now(), EndAt: f.clk.now().Add(time.Hour), OnTimeout: store.OnTimeoutKill}
	if err := f.st.CreateSandbox(ctx, &sb); err != nil {
		t.Fatal(err)
	}
}

func (f *testFleet) admin(t *testing.T, method, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), method, f.srv.URL+path, nil)
	req.Header.Set("X-Admin-Token", "admin-secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestPlacementFollowsRegistry: heartbeating nodes are placed on; a drained
// node takes no new sandboxes and takes them again when undrained.
func TestPlacementFollowsRegistry(t *testing.T) {
	f := newTestFleet(t)
	if _, err := f.reg.Pick(t.Context(), api.Placement{MemoryMB: 512}); !errors.Is(err, api.ErrNoNode) ||
		!strings.Contains(err.Error(), "no orchestrator node is registered") {
		t.Fatalf("Pick with no nodes: got %v, want ErrNoNode saying none is registered", err)
	}
	f.beat(t, "a", "b", "c")
	if got := f.reg.IDs(); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("IDs: got %v, want [a b c]", got)
	}
	placed := func() map[string]int {
		count := map[string]int{}
		for range 30 {
			id, err := f.reg.Pick(t.Context(), api.Placement{VCPUs: 1, MemoryMB: 128})
			if err != nil {
				t.Fatal(err)
			}
			count[id]++
		}
		f.clk.add(bookingTTL + time.Second) // the next round starts from the heartbeats
		f.beat(t, "a", "b", "c")
		return count
	}
	if got := placed(); len(got) != 3 {
		t.Errorf("30 placements on 3 equal nodes: got %v, want all three used", got)
	}
	if code, body := f.admin(t, "POST", "/admin/nodes/b/drain"); code != 200 || !strings.Contains(body, `"state":"draining"`) {
		t.Fatalf("drain: got %d %s", code, body)
	}
	f.beat(t, "a", "b", "c") // a draining node keeps heartbeating and stays draining
	if got := placed(); got["b"] != 0 || got["a"]+got["c"] != 30 {
		t.Errorf("placements after draining b: got %v, want none on b", got)
	}
	if code, _ := f.admin(t, "POST", "/admin/nodes/b/undrain"); code != 200 {
		t.Fatalf("undrain: got %d", code)
	}
	if got := placed(); got["b"] == 0 {
		t.Errorf("placements after undraining b: got %v, want some on b", got)
	}
	// Everything drained: a 503 that says why.
	for _, id := range []string{"a", "b", "c"} {
		f.admin(t, "POST", "/admin/nodes/"+id+"/drain")
	}
	_, err := f.reg.Pick(t.Context(), api.Placement{MemoryMB: 512})
	if !errors.Is(err, api.ErrNoNode) || err.Error() != "3 nodes: 3 draining" {
		t.Errorf("Pick with all drained: got %v, want ErrNoNode \"3 nodes: 3 draining\"", err)
	}
}

// TestNodeLost: a node silent for 15 s is lost and its live sandboxes are
// reported dead with reason "node lost" once; others' sandboxes and final
// rows are untouched; placement avoids it; when it heartbeats again it is
// ready (and the api is told, to watch and reconcile it).
func TestNodeLost(t *testing.T) {
	f := newTestFleet(t)
	ctx := t.Context()
	f.beat(t, "a", "b")
	f.sandbox(t, "sa1", "a", store.StateRunning)
	f.sandbox(t, "sa2", "a", store.StatePaused)
	f.sandbox(t, "sa3", "a", store.StateKilled)
	f.sandbox(t, "sb1", "b", store.StateRunning)

	f.clk.add(10 * time.Second)
	f.beat(t, "b")
	if err := f.reg.SweepLost(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := f.st.GetNode(ctx, "a"); n.State != store.NodeReady {
		t.Fatalf("a after 10 s: got %s, want ready", n.State)
	}
	f.clk.add(6 * time.Second) // a: 16 s silent, b: 6 s
	for range 2 {              // a second sweep reports nothing again
		if err := f.reg.SweepLost(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := f.st.GetNode(ctx, "a"); n.State != store.NodeLost || n.StateReason != ReasonNodeLost {
		t.Errorf("a after 16 s: got %s %q, want lost", n.State, n.StateReason)
	}
	want := map[string]store.SandboxState{"sa1": store.StateDead, "sa2": store.StateDead, "sa3": store.StateKilled, "sb1": store.StateRunning}
	for id, st := range want {
		sb, err := f.st.GetSandbox(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if sb.State != st || (st == store.StateDead && sb.StateReason != ReasonNodeLost) {
			t.Errorf("%s: got %s %q, want %s", id, sb.State, sb.StateReason, st)
		}
	}
	f.mu.Lock()
	lost := slices.Clone(f.lost)
	f.mu.Unlock()
	slices.Sort(lost)
	if !slices.Equal(lost, []string{"sa1: node lost", "sa2: node lost"}) {
		t.Errorf("OnLost: got %v, want sa1 and sa2 once each", lost)
	}
	if err := f.reg.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if got := f.reg.IDs(); !slices.Equal(got, []string{"b"}) {
		t.Errorf("IDs with a lost: got %v, want [b]", got)
	}
	for range 10 {
		if id, err := f.reg.Pick(ctx, api.Placement{MemoryMB: 128}); err != nil || id != "b" {
			t.Fatalf("Pick with a lost: got %q, %v, want b", id, err)
		}
	}
	// a drain of a lost node is refused.
	if code, body := f.admin(t, "POST", "/admin/nodes/a/drain"); code != http.StatusConflict {
		t.Errorf("drain of a lost node: got %d %s, want 409", code, body)
	}
	// a returns.
	f.mu.Lock()
	f.up = nil
	f.mu.Unlock()
	f.beat(t, "a")
	if n, _ := f.st.GetNode(ctx, "a"); n.State != store.NodeReady {
		t.Errorf("a after it beat again: got %s, want ready", n.State)
	}
	f.mu.Lock()
	up := slices.Clone(f.up)
	f.mu.Unlock()
	if !slices.Equal(up, []string{"a"}) {
		t.Errorf("OnNodeUp after a's return: got %v, want [a]", up)
	}
	if sb, _ := f.st.GetSandbox(ctx, "sa1"); sb.State != store.StateDead {
		t.Errorf("sa1 after a's return: got %s, want dead (not resurrected)", sb.State)
	}
}

// TestAgentRun: a node's agent registers it at once and keeps it fresh.
func TestAgentRun(t *testing.T) {
	f := newTestFleet(t)
	ctx, cancel := context.WithCancel(t.Context())
	var beats atomic.Int32
	a := NewAgent(AgentConfig{ControlURL: f.srv.URL + "/", NodeToken: "node-secret", Interval: 10 * time.Millisecond, Logger: quiet(),
		Beat: func(ctx context.Context) (Heartbeat, error) {
			beats.Add(1)
			return beat("n1")(ctx)
		}})
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for beats.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatal("agent did not beat 3 times in 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	n, err := f.st.GetNode(t.Context(), "n1")
	if err != nil || n.State != store.NodeReady || n.URL != "http://n1.invalid:3002" || n.MemoryMB != 8192 {
		t.Errorf("registered node: got %+v, %v", n, err)
	}
}

func TestHandlerRefuses(t *testing.T) {
	f := newTestFleet(t)
	post := func(token, body string) (int, string) {
		req, _ := http.NewRequestWithContext(t.Context(), "POST", f.srv.URL+HeartbeatPath, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	good := `{"id":"n1","url":"http://10.0.0.1:3002","runtimes":["gvisor"],"vcpus":2,"memoryMB":1024,"diskMB":1000}`
	cases := []struct {
		name, token, body string
		want              int
		msg               string
	}{
		{"no token", "", good, 401, "node token"},
		{"wrong token", "admin-secret", good, 401, "node token"},
		{"not json", "node-secret", "{", 400, "bad heartbeat"},
		{"unknown field", "node-secret", `{"id":"n1","url":"http://x:1","bogus":1}`, 400, "unknown field"},
		{"no id", "node-secret", `{"url":"http://x:1"}`, 400, "id"},
		{"bad url", "node-secret", `{"id":"n1","url":"/tmp/node.sock"}`, 400, "url"},
		{"negative", "node-secret", `{"id":"n1","url":"http://x:1","memoryMB":-1}`, 400, "negative"},
		{"good", "node-secret", good, 200, `"state":"ready"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, body := post(c.token, c.body)
			if code != c.want || !strings.Contains(body, c.msg) {
				t.Errorf("got %d %s, want %d with %q", code, body, c.want, c.msg)
			}
			if c.want != 200 && !strings.Contains(body, fmt.Sprintf(`"code":%d`, c.want)) {
				t.Errorf("error body %s: want {code, message}", body)
			}
		})
	}
	for _, c := range []struct {
		method, path, token string
		want                int
	}{
		{"GET", "/admin/nodes", "", 401},
		{"GET", "/admin/nodes", "node-secret", 401},
		{"POST", "/admin/nodes/nope/drain", "admin-secret", 404},
	} {
		req, _ := http.NewRequestWithContext(t.Context(), c.method, f.srv.URL+c.path, nil)
		if c.token != "" {
			req.Header.Set("X-Admin-Token", c.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s %s with %q: got %d, want %d", c.method, c.path, c.token, resp.StatusCode, c.want)
		}
	}
	if code, body := f.admin(t, "GET", "/admin/nodes"); code != 200 || !strings.Contains(body, `"id":"n1"`) {
		t.Errorf("GET /admin/nodes: got %d %s", code, body)
	}
}

func TestHostCapacity(t *testing.T) {
	cpu, mem, disk, err := HostCapacity(t.TempDir())
	if err != nil || cpu < 1 || mem < 64 || disk < 1 {
		t.Errorf("HostCapacity: got %d CPUs, %d MiB, %d MiB disk, %v", cpu, mem, disk, err)
	}
}

// TestBaseRecordedOnce: the base build a node reports is handed to OnBase
// once per replica, and again after OnBase failed.
func TestBaseRecordedOnce(t *testing.T) {
	f := newTestFleet(t)
	var calls atomic.Int32
	fail := atomic.Bool{}
	fail.Store(true)
	f.reg.cfg.OnBase = func(_ context.Context, b BaseBuild) error {
		calls.Add(1)
		if b.BuildID != "base-1" || b.Dir != "/var/lib/cocoon/templates/base/base-1" {
			t.Errorf("OnBase: got %+v", b)
		}
		if fail.Load() {
			return errors.New("store down")
		}
		return nil
	}
	a := NewAgent(AgentConfig{ControlURL: f.srv.URL, NodeToken: "node-secret", Logger: quiet(),
		Beat: func(ctx context.Context) (Heartbeat, error) {
			hb, _ := beat("n1")(ctx)
			hb.Base = &BaseBuild{BuildID: "base-1", Dir: "/var/lib/cocoon/templates/base/base-1", Runtimes: []string{"gvisor"}, VCPUs: 2, MemoryMB: 512, DiskMB: 2048}
			return hb, nil
		}})
	for i, want := range []int32{1, 2, 2, 2} {
		if i == 1 {
			fail.Store(false)
		}
		if _, err := a.Beat(t.Context()); err != nil {
			t.Fatal(err)
		}
		if got := calls.Load(); got != want {
			t.Errorf("after beat %d: OnBase called %d times, want %d", i+1, got, want)
		}
	}
}

// TestBookingsSurviveRefresh: placements made since the nodes' last
// heartbeats still count after a refresh, so a burst of creates spreads
// instead of landing on the node that looked emptiest at its last beat.
func TestBookingsSurviveRefresh(t *testing.T) {
	f := newTestFleet(t)
	f.beat(t, "a", "b", "c")
	count := map[string]int{}
	for range 12 {
		id, err := f.reg.Pick(t.Context(), api.Placement{VCPUs: 1, MemoryMB: 1024})
		if err != nil {
			t.Fatal(err)
		}
		count[id]++
		f.clk.add(100 * time.Millisecond)
		if err := f.reg.Refresh(t.Context()); err != nil { // no new heartbeat meanwhile
			t.Fatal(err)
		}
	}
	for _, id := range []string{"a", "b", "c"} {
		if count[id] < 3 {
			t.Errorf("12 placements with a refresh after each: got %v, want at least 3 on each node", count)
			break
		}
	}
	// Bookings expire: after bookingTTL the heartbeats are the truth.
	f.clk.add(bookingTTL + time.Second)
	f.beat(t, "a", "b", "c")
	for _, n := range f.reg.snapNodes() {
		if n.UsedMemoryMB != 0 {
			t.Errorf("node %s after bookings expired: %d MiB used, want 0", n.ID, n.UsedMemoryMB)
		}
	}
}

// snapNodes returns the load the registry's last refresh placed by.
func (r *Registry) snapNodes() []store.Node {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []store.Node
	for _, n := range r.nodes {
		out = append(out, n)
	}
	return out
}

// TestBookingGoesWithTheNextBeat: a heartbeat stamped bookingGrace after a
// placement counts the sandbox itself, so the booking no longer adds to it.
func TestBookingGoesWithTheNextBeat(t *testing.T) {
	f := newTestFleet(t)
	f.beat(t, "a")
	if _, err := f.reg.Pick(t.Context(), api.Placement{VCPUs: 1, MemoryMB: 1000}); err != nil {
		t.Fatal(err)
	}
	used := func() int64 { return f.reg.snapNodes()[0].UsedMemoryMB }
	f.clk.add(time.Second)
	f.beat(t, "a") // too early: the create may not be done
	if got := used(); got != 1000 {
		t.Errorf("used after an early beat: got %d MiB, want 1000 (booked)", got)
	}
	f.clk.add(bookingGrace)
	f.beat(t, "a") // the node's own count (0 here) is the truth
	if got := used(); got != 0 {
		t.Errorf("used after a later beat: got %d MiB, want 0", got)
	}
}
