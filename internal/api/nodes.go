package api

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1/orchestratorv1connect"
)

// ErrNoNode is returned by NodeSet.Pick when no node can take a sandbox.
var ErrNoNode = errors.New("no node available")

// Placement describes a sandbox to place, so a NodeSet can choose by
// resources or by the runtime a template needs.
type Placement struct {
	TemplateID string
	// BuildID is the template build the sandbox starts from: a node that
	// holds its artifacts is preferred (locality).
	BuildID  string
	Runtime  string // required runtime, "" for the node's default
	VCPUs    uint32
	MemoryMB uint32
	DiskMB   uint32
	// Avoid names nodes not to choose (one that refused the connection).
	Avoid []string
}

// NodeSet is how the api reaches nodes: only through the orchestrator RPC.
// Every sandbox record names its node; the set returns that node's client
// and chooses a node for new (and resumed) sandboxes.
type NodeSet interface {
	// Client returns the RPC client of node id.
	Client(id string) (orchestratorv1connect.OrchestratorServiceClient, error)
	// Pick chooses a node for a new or resumed sandbox.
	Pick(ctx context.Context, p Placement) (string, error)
	// IDs lists the known nodes, for reconciliation and sampling.
	IDs() []string
}

// StaticNodes is a NodeSet over a fixed set of nodes. It picks the node with
// the fewest sandboxes placed by this process, which is good enough for one
// node and spreads load across a few.
type StaticNodes struct {
	mu      sync.Mutex
	clients map[string]orchestratorv1connect.OrchestratorServiceClient
	placed  map[string]int
}

// NewStaticNodes returns a NodeSet over clients, keyed by node id.
func NewStaticNodes(clients map[string]orchestratorv1connect.OrchestratorServiceClient) *StaticNodes {
	return &StaticNodes{clients: clients, placed: map[string]int{}}
}

// Client implements NodeSet.
func (s *StaticNodes) Client(id string) (orchestratorv1connect.OrchestratorServiceClient, error) {
	c, ok := s.clients[id]
	if !ok {
		return nil, fmt.Errorf("unknown node %q", id)
	}
	return c, nil
}

// Pick implements NodeSet.
func (s *StaticNodes) Pick(_ context.Context, p Placement) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	best := ""
	for _, id := range s.IDs() {
		if slices.Contains(p.Avoid, id) {
			continue
		}
		if best == "" || s.placed[id] < s.placed[best] {
			best = id
		}
	}
	if best == "" {
		return "", ErrNoNode
	}
	s.placed[best]++
	return best, nil
}

// IDs implements NodeSet, in a stable order.
func (s *StaticNodes) IDs() []string {
	ids := make([]string, 0, len(s.clients))
	for id := range s.clients {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}
