package api

import (
	"net/http"
	"net/http/httptest"
	"testing"

	orchestratorv1 "github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1"
	"github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1/orchestratorv1connect"
	"github.com/cocoon-run/cocoon/internal/nodeauth"
)

// TestPausedStaysOnItsNode: a paused sandbox's snapshot lives on its node
// (docs/decisions.md), so resume and kill go to that node, whatever node
// placement would choose now (issue 14: resume went to any node, the kill
// of a paused sandbox to the first node, leaking the snapshot).
func TestPausedStaysOnItsNode(t *testing.T) {
	e := newEnv(t, Config{})
	node2 := newFakeNode(nodeToken)
	_, h := orchestratorv1connect.NewOrchestratorServiceHandler(node2)
	mux := http.NewServeMux()
	mux.Handle("/", h)
	srv2 := httptest.NewServer(mux)
	t.Cleanup(srv2.Close)
	old, _ := e.nodes.Client("node1")
	e.nodes = NewStaticNodes(map[string]orchestratorv1connect.OrchestratorServiceClient{
		"node1": old, "node2": nodeauth.NewClient(srv2.Client(), srv2.URL, nodeToken),
	})
	e.start(Config{})

	// The fewest-placed picker alternates: a, c on node1; b, d on node2.
	var ids []string
	for range 4 {
		ids = append(ids, e.create(e.keyA, map[string]any{"timeout": 300}).SandboxID)
	}
	b, d := ids[1], ids[3]
	for _, id := range []string{b, d} {
		if got := node2.state(id); got != orchestratorv1.State_STATE_RUNNING {
			t.Fatalf("%s on node2: got %v, want running", id, got)
		}
		if r := e.do(e.keyA, "POST", "/sandboxes/"+id+"/pause", nil); r.status != 204 {
			t.Fatalf("pause %s: %d %s", id, r.status, r.body)
		}
		if sb, _ := e.store.GetSandbox(t.Context(), id); sb.NodeID != "node2" {
			t.Errorf("%s's row while paused: node %q, want node2", id, sb.NodeID)
		}
	}
	// Placement would choose node1 now; b's snapshot is on node2.
	if r := e.do(e.keyA, "POST", "/sandboxes/"+b+"/resume", map[string]any{"timeout": 60}); r.status != 201 {
		t.Fatalf("resume b: got %d %s, want 201 (resumed on node2)", r.status, r.body)
	}
	if got := node2.state(b); got != orchestratorv1.State_STATE_RUNNING {
		t.Errorf("b on node2 after resume: got %v, want running", got)
	}
	if sb, err := e.store.GetSandbox(t.Context(), b); err != nil || sb.NodeID != "node2" {
		t.Errorf("b's row after resume: node %q, %v; want node2", sb.NodeID, err)
	}
	// d is paused on node2: its kill deletes the snapshot there.
	if r := e.do(e.keyA, "DELETE", "/sandboxes/"+d, nil); r.status != 204 {
		t.Fatalf("kill paused d: %d %s", r.status, r.body)
	}
	if got := node2.state(d); got != orchestratorv1.State_STATE_UNSPECIFIED {
		t.Errorf("d's snapshot on node2 after kill: got %v, want gone", got)
	}
}

// TestCreateAvoidsADeadNode: a node that refuses the connection (it died;
// the fleet marks it lost only after 15 s) never saw the create, which is
// placed again on another node instead of failing.
func TestCreateAvoidsADeadNode(t *testing.T) {
	e := newEnv(t, Config{})
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close() // connection refused from now on
	live, _ := e.nodes.Client("node1")
	e.nodes = NewStaticNodes(map[string]orchestratorv1connect.OrchestratorServiceClient{
		"node0": nodeauth.NewClient(http.DefaultClient, deadURL, nodeToken), // picked first (sorted, none placed)
		"node1": live,
	})
	e.start(Config{})
	sb := e.create(e.keyA, map[string]any{"timeout": 60})
	if got := e.node.state(sb.SandboxID); got != orchestratorv1.State_STATE_RUNNING {
		t.Fatalf("sandbox on node1: got %v, want running", got)
	}
	if row, err := e.store.GetSandbox(t.Context(), sb.SandboxID); err != nil || row.NodeID != "node1" || row.State != "running" {
		t.Errorf("row: node %q state %q, %v; want node1 running", row.NodeID, row.State, err)
	}
}
