package api

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	orchestratorv1 "github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1"
	"github.com/cocoon-run/cocoon/internal/store"
)

// Watch streams the fake node's sandboxes that turn dead, once each.
func (f *fakeNode) Watch(ctx context.Context, req *connect.Request[orchestratorv1.WatchRequest], stream *connect.ServerStream[orchestratorv1.WatchResponse]) error {
	if err := f.check(req.Header(), "Watch", ""); err != nil {
		return err
	}
	if err := stream.Send(&orchestratorv1.WatchResponse{}); err != nil {
		return err
	}
	sent := map[string]bool{}
	for {
		var dead []*orchestratorv1.Sandbox
		f.mu.Lock()
		for id, sb := range f.sandboxes {
			if sb.GetState() == orchestratorv1.State_STATE_DEAD && !sent[id] {
				sent[id] = true
				dead = append(dead, sb)
			}
		}
		f.mu.Unlock()
		for _, sb := range dead {
			if err := stream.Send(&orchestratorv1.WatchResponse{Sandbox: sb}); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestDeathReportedByNode: a death the node reports on its Watch stream
// reaches the death hooks (the proxy) and marks the sandbox dead with the
// node's reason within 2 s, long before the periodic reconcile.
func TestDeathReportedByNode(t *testing.T) {
	e := newEnv(t, Config{LifecycleInterval: time.Hour, ReconcileInterval: time.Hour})
	var mu sync.Mutex
	told := map[string]string{}
	e.srv.OnDeath(func(id, reason string) {
		mu.Lock()
		told[id] = reason
		mu.Unlock()
	})
	sb := e.create(e.keyA, nil)
	other := e.create(e.keyA, nil)
	e.run()
	t0 := time.Now()
	e.node.put(&orchestratorv1.Sandbox{SandboxId: sb.SandboxID, State: orchestratorv1.State_STATE_DEAD, Detail: "out of memory"})
	eventually(t, "the death reported", func() bool {
		got, err := e.store.GetSandbox(context.Background(), sb.SandboxID)
		mu.Lock()
		defer mu.Unlock()
		return err == nil && got.State == store.StateDead && told[sb.SandboxID] != ""
	})
	if took := time.Since(t0); took > 2*time.Second {
		t.Errorf("marked dead %v after the node's report, want ≤ 2 s", took)
	}
	got, _ := e.store.GetSandbox(context.Background(), sb.SandboxID)
	mu.Lock()
	reason, otherTold := told[sb.SandboxID], told[other.SandboxID]
	mu.Unlock()
	if got.StateReason != "out of memory" || reason != "out of memory" {
		t.Errorf("reason: stored %q, told %q; want \"out of memory\"", got.StateReason, reason)
	}
	if otherTold != "" {
		t.Errorf("a live sandbox was reported dead: %q", otherTold)
	}
	if _, status := e.info(e.keyA, sb.SandboxID); status != 404 {
		t.Errorf("info of the dead sandbox: %d, want 404", status)
	}
	if _, err := e.srv.Resolve(context.Background(), sb.SandboxID); err == nil {
		t.Error("Resolve of the dead sandbox succeeded")
	} else if d := (*DeadError)(nil); !errors.As(err, &d) || d.Reason != "out of memory" {
		t.Errorf("Resolve of the dead sandbox: %v, want a DeadError with the reason", err)
	}
}

// TestRestartSettlesTransitions: operations an api process left half-way
// when it died are settled by the next one at its start, from the node's
// view (a pause the node finished, a pause it rolled back, a create it
// never finished, a resume it never finished, a create and a resume it
// finished), before it serves a request; not NodeTimeout later. A sandbox
// settled running is routed to the address the node reports (a create cut
// short had none: the proxy failed it while the list said running).
func TestRestartSettlesTransitions(t *testing.T) {
	e := newEnv(t, Config{LifecycleInterval: time.Hour, ReconcileInterval: time.Hour})
	ctx := context.Background()
	paused := e.create(e.keyA, nil)
	rolledBack := e.create(e.keyA, nil)
	lost := e.create(e.keyA, nil)
	resuming := e.create(e.keyA, nil)
	created := e.create(e.keyA, nil)
	resumed := e.create(e.keyA, nil)
	set := func(id string, to store.SandboxState) {
		t.Helper()
		if _, err := e.store.SetSandboxState(ctx, id, []store.SandboxState{store.StateRunning}, to, ""); err != nil {
			t.Fatal(err)
		}
	}
	set(paused.SandboxID, store.StatePausing)
	e.node.put(&orchestratorv1.Sandbox{SandboxId: paused.SandboxID, State: orchestratorv1.State_STATE_PAUSED, Snapshot: "/snapshots/x/state"})
	set(rolledBack.SandboxID, store.StatePausing) // the node still runs it
	set(lost.SandboxID, store.StateCreating)
	e.node.drop(lost.SandboxID)
	set(resuming.SandboxID, store.StateResuming) // the node never finished it
	e.node.put(&orchestratorv1.Sandbox{SandboxId: resuming.SandboxID, State: orchestratorv1.State_STATE_PAUSED, Snapshot: "/snapshots/y/state"})
	// The node finished a create whose row was not updated yet (no
	// address), and a resume into a new slot (the row has the old one).
	unfinished := func(id string, to store.SandboxState, addr string) {
		t.Helper()
		if _, err := store.Modify(ctx, e.store, id, func(c *store.Sandbox) error {
			c.State, c.NodeData = to, nodeData(&orchestratorv1.Sandbox{Address: addr})
			if to == store.StateResuming {
				c.EndAt = time.Now().Add(-time.Minute) // its deadline passed while paused
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	unfinished(created.SandboxID, store.StateCreating, "")
	e.node.put(&orchestratorv1.Sandbox{SandboxId: created.SandboxID, State: orchestratorv1.State_STATE_RUNNING, Runtime: "gvisor", Address: "10.9.0.2"})
	unfinished(resumed.SandboxID, store.StateResuming, "10.9.0.3")
	e.node.put(&orchestratorv1.Sandbox{SandboxId: resumed.SandboxID, State: orchestratorv1.State_STATE_RUNNING, Runtime: "gvisor", Address: "10.9.0.4"})

	// A new api process over the same store, after the crash.
	e.start(Config{LifecycleInterval: time.Hour, ReconcileInterval: time.Hour})
	e.srv.ReconcileAtStart(ctx)
	for _, tc := range []struct {
		id       string
		want     store.SandboxState
		snapshot string
	}{
		{paused.SandboxID, store.StatePaused, "/snapshots/x/state"},
		{rolledBack.SandboxID, store.StateRunning, ""},
		{lost.SandboxID, store.StateDead, ""},
		{resuming.SandboxID, store.StatePaused, "/snapshots/y/state"},
		{created.SandboxID, store.StateRunning, ""},
		{resumed.SandboxID, store.StateRunning, ""},
	} {
		got, err := e.store.GetSandbox(ctx, tc.id)
		if err != nil || got.State != tc.want || got.SnapshotURI != tc.snapshot {
			t.Errorf("%s: got %q snapshot %q (%v), want %q snapshot %q", tc.id, got.State, got.SnapshotURI, err, tc.want, tc.snapshot)
		}
	}
	for id, want := range map[string]string{created.SandboxID: "10.9.0.2", resumed.SandboxID: "10.9.0.4"} {
		if rt, err := e.srv.Resolve(ctx, id); err != nil || rt.Addr != want {
			t.Errorf("%s settled running: routed to %q (%v), want the node's address %s", id, rt.Addr, err, want)
		}
	}
	if sb, err := e.store.GetSandbox(ctx, resumed.SandboxID); err != nil || !sb.EndAt.After(time.Now()) {
		t.Errorf("the settled resume's deadline %v (%v) has passed: it would expire at once", sb.EndAt, err)
	}
}
