package store

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

// TestNodes runs the node registry's tests on SQLite and PostgreSQL.
func TestNodes(t *testing.T) {
	suite := []struct {
		name string
		fn   func(t *testing.T, dsn string)
	}{
		{"Heartbeat", testNodeHeartbeat},
		{"States", testNodeStates},
		{"MarkLostOnce", testMarkLostOnce},
	}
	t.Run("sqlite", func(t *testing.T) {
		for _, c := range suite {
			t.Run(c.name, func(t *testing.T) {
				c.fn(t, "sqlite://"+filepath.Join(t.TempDir(), "cocoon.db"))
			})
		}
	})
	t.Run("postgres", func(t *testing.T) {
		pg, err := startPG(t)
		if err != nil {
			if os.Getenv("COCOON_REQUIRE_PG") == "1" {
				t.Fatalf("postgres unavailable: %v", err)
			}
			t.Skipf("postgres unavailable (set COCOON_REQUIRE_PG=1 to fail): %v", err)
		}
		for _, c := range suite {
			t.Run(c.name, func(t *testing.T) { c.fn(t, pg.newDSN(t)) })
		}
	})
}

func testNode(id string, sec int) Node {
	return Node{
		ID: id, URL: "http://" + id + ":3002", Runtimes: []string{"gvisor", "qemu"},
		VCPUs: 16, MemoryMB: 65536, DiskMB: 1 << 20, UsedVCPUs: 2, UsedMemoryMB: 1024, UsedDiskMB: 4096,
		Sandboxes: 2, Warm: 1, Templates: []string{"b1", "b2"}, HeartbeatAt: ts(sec),
	}
}

func testNodeHeartbeat(t *testing.T, dsn string) {
	ctx := t.Context()
	s := open(t, dsn)
	if _, err := s.GetNode(ctx, "n1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetNode before heartbeat: got %v, want ErrNotFound", err)
	}
	got, err := s.Heartbeat(ctx, testNode("n1", 0))
	if err != nil {
		t.Fatal(err)
	}
	want := testNode("n1", 0)
	want.State, want.RegisteredAt = NodeReady, ts(0)
	if !nodeEqual(got, want) {
		t.Errorf("first heartbeat: got %+v, want %+v", got, want)
	}
	// A later heartbeat replaces load and address, keeps the registration time.
	n := testNode("n1", 5)
	n.URL, n.Sandboxes, n.Templates = "http://10.0.0.9:3002", 7, nil
	if got, err = s.Heartbeat(ctx, n); err != nil {
		t.Fatal(err)
	}
	want = n
	want.State, want.RegisteredAt, want.Templates = NodeReady, ts(0), []string{}
	if !nodeEqual(got, want) {
		t.Errorf("second heartbeat: got %+v, want %+v", got, want)
	}
	if _, err := s.Heartbeat(ctx, testNode("n0", 1)); err != nil {
		t.Fatal(err)
	}
	all, err := s.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, n := range all {
		ids = append(ids, n.ID)
	}
	if !slices.Equal(ids, []string{"n0", "n1"}) {
		t.Errorf("ListNodes: got %v, want [n0 n1]", ids)
	}
}

func testNodeStates(t *testing.T, dsn string) {
	ctx := t.Context()
	s := open(t, dsn)
	if _, err := s.SetNodeState(ctx, "nope", NodeDraining, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetNodeState of unknown node: got %v, want ErrNotFound", err)
	}
	if _, err := s.Heartbeat(ctx, testNode("n1", 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetNodeState(ctx, "n1", "bogus", ""); err == nil {
		t.Fatal("SetNodeState bogus: want an error")
	}
	// Draining survives heartbeats.
	if _, err := s.SetNodeState(ctx, "n1", NodeDraining, "drained by admin"); err != nil {
		t.Fatal(err)
	}
	got, err := s.Heartbeat(ctx, testNode("n1", 3))
	if err != nil {
		t.Fatal(err)
	}
	if got.State != NodeDraining || got.StateReason != "drained by admin" {
		t.Errorf("heartbeat of a draining node: got %s %q, want draining", got.State, got.StateReason)
	}
	// Lost comes back ready at the next heartbeat.
	if _, err := s.SetNodeState(ctx, "n1", NodeLost, "node lost"); err != nil {
		t.Fatal(err)
	}
	if got, err = s.Heartbeat(ctx, testNode("n1", 30)); err != nil {
		t.Fatal(err)
	}
	if got.State != NodeReady || got.StateReason != "" {
		t.Errorf("heartbeat of a lost node: got %s %q, want ready", got.State, got.StateReason)
	}
}

func testMarkLostOnce(t *testing.T, dsn string) {
	ctx := t.Context()
	s := open(t, dsn)
	for i, id := range []string{"a", "b", "c"} {
		if _, err := s.Heartbeat(ctx, testNode(id, i*10)); err != nil { // a@0 b@10 c@20
			t.Fatal(err)
		}
	}
	// Four replicas sweep at once: each stale node is reported once.
	var (
		mu  sync.Mutex
		got []string
		wg  sync.WaitGroup
	)
	for range 4 {
		wg.Go(func() {
			lost, err := s.MarkLostNodes(ctx, ts(15), "node lost")
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, n := range lost {
				if n.State != NodeLost || n.StateReason != "node lost" {
					t.Errorf("lost node %s: got %s %q", n.ID, n.State, n.StateReason)
				}
				got = append(got, n.ID)
			}
		})
	}
	wg.Wait()
	slices.Sort(got)
	if !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("MarkLostNodes: got %v, want [a b]", got)
	}
	if n, _ := s.GetNode(ctx, "c"); n.State != NodeReady {
		t.Errorf("fresh node c: got %s, want ready", n.State)
	}
	if lost, err := s.MarkLostNodes(ctx, ts(15), "node lost"); err != nil || len(lost) != 0 {
		t.Errorf("second sweep: got %v, %v, want none", lost, err)
	}
}

func nodeEqual(a, b Node) bool {
	return a.ID == b.ID && a.URL == b.URL && slices.Equal(a.Runtimes, b.Runtimes) && a.State == b.State &&
		a.StateReason == b.StateReason && a.VCPUs == b.VCPUs && a.MemoryMB == b.MemoryMB && a.DiskMB == b.DiskMB &&
		a.UsedVCPUs == b.UsedVCPUs && a.UsedMemoryMB == b.UsedMemoryMB && a.UsedDiskMB == b.UsedDiskMB &&
		a.Sandboxes == b.Sandboxes && a.Warm == b.Warm && slices.Equal(a.Templates, b.Templates) &&
		a.RegisteredAt.Equal(b.RegisteredAt) && a.HeartbeatAt.Equal(b.HeartbeatAt)
}
