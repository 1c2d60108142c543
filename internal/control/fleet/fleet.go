// Package fleet is the control plane's view of many orchestrator nodes.
//
// Nodes heartbeat (Agent, on the node) to any api replica, which records
// them in the store's node registry (Handler). Every api replica keeps a
// Registry: it refreshes the registry's rows every second into a placement
// snapshot and a client per node, implements api.NodeSet over them (so
// every sandbox operation goes to the node its row names), and sweeps for
// nodes silent for LostAfter: such a node is marked lost and its sandboxes
// dead with reason "node lost" (API, logs, the proxy's death hook). A node
// that heartbeats again is ready again; the api's reconcile then kills on
// it what the store no longer wants (killed, dead), so nothing is
// resurrected. A draining node keeps its sandboxes and takes no new ones.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1/orchestratorv1connect"
	"github.com/cocoon-run/cocoon/internal/api"
	"github.com/cocoon-run/cocoon/internal/control/placement"
	"github.com/cocoon-run/cocoon/internal/nodeauth"
	"github.com/cocoon-run/cocoon/internal/store"
)

// Defaults of Config.
const (
	// DefaultLostAfter is how long a node may miss heartbeats before it is
	// lost (the 15 s: five missed beats of HeartbeatInterval).
	DefaultLostAfter = 15 * time.Second
	// DefaultRefresh is how often a Registry rereads the node rows.
	DefaultRefresh = time.Second
	// HeartbeatInterval is how often an Agent heartbeats.
	HeartbeatInterval = 3 * time.Second
	// ReasonNodeLost is the state reason of the sandboxes of a lost node.
	ReasonNodeLost = "node lost"
)

// Config configures a Registry.
type Config struct {
	Store     store.Store
	NodeToken string // the node RPC's token, both ways (internal/nodeauth)
	// AdminToken authorises /admin/nodes (cocoon node list|drain|undrain).
	AdminToken string
	HTTPClient *http.Client // for the node RPC; nil means a default one
	Logger     *slog.Logger
	LostAfter  time.Duration // <= 0 means DefaultLostAfter
	Refresh    time.Duration // <= 0 means DefaultRefresh
	// OnLost is told about each sandbox reported dead because its node was
	// lost (the proxy fails its requests in flight).
	OnLost func(sandboxID, reason string)
	// OnNodeUp is told about a node seen ready for the first time or again
	// after it was lost (the api watches its sandboxes' deaths).
	OnNodeUp func(nodeID string)
	// OnBase records a base template build a node has, once per build ID
	// per replica (again after an error).
	OnBase func(ctx context.Context, b BaseBuild) error
	Now    func() time.Time
}

// Registry is an api replica's view of the fleet; it implements api.NodeSet.
type Registry struct {
	cfg Config

	mu      sync.Mutex
	nodes   map[string]store.Node
	clients map[string]client
	snap    *placement.Snapshot
	bases   map[string]bool // base builds recorded (OnBase)
	// booked are this replica's recent placements, added to the nodes'
	// reported load until their heartbeats surely count them.
	booked []booking
}

type booking struct {
	node string
	at   time.Time
	req  placement.Request
}

// bookingTTL is how long at most a placement is added to its node's
// reported load: the create must finish and the next heartbeat come (every
// 3 s). A heartbeat stamped bookingGrace after the placement counts the
// sandbox itself, so the booking goes then (counting a sandbox twice makes
// a small node refuse creates it could take).
const (
	bookingTTL   = 2 * HeartbeatInterval
	bookingGrace = HeartbeatInterval
)

type client struct {
	url string
	c   orchestratorv1connect.OrchestratorServiceClient
}

var _ api.NodeSet = (*Registry)(nil)

// New returns a Registry; call Refresh (or Run) before it places anything.
func New(cfg Config) *Registry {
	if cfg.LostAfter <= 0 {
		cfg.LostAfter = DefaultLostAfter
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32, IdleConnTimeout: 90 * time.Second}}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Registry{cfg: cfg, nodes: map[string]store.Node{}, clients: map[string]client{},
		snap: placement.New(nil, placement.Options{}), bases: map[string]bool{}}
}

// newBase tells whether build id is to be recorded, and marks it.
func (r *Registry) newBase(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.bases[id] {
		return false
	}
	r.bases[id] = true
	return true
}

func (r *Registry) forgetBase(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.bases, id)
}

// Run refreshes the view and sweeps for lost nodes until ctx ends.
func (r *Registry) Run(ctx context.Context) error {
	t := time.NewTicker(r.cfg.Refresh)
	defer t.Stop()
	for {
		if err := r.SweepLost(ctx); err != nil && ctx.Err() == nil {
			r.cfg.Logger.WarnContext(ctx, "sweep lost nodes", "err", err)
		}
		if err := r.Refresh(ctx); err != nil && ctx.Err() == nil {
			r.cfg.Logger.WarnContext(ctx, "refresh nodes", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Refresh rereads the node rows: placement and clients follow them.
func (r *Registry) Refresh(ctx context.Context) error {
	rows, err := r.cfg.Store.ListNodes(ctx)
	if err != nil {
		return err
	}
	var up []string
	r.mu.Lock()
	now := r.cfg.Now()
	beat := make(map[string]time.Time, len(rows))
	for _, n := range rows {
		beat[n.ID] = n.HeartbeatAt
	}
	r.booked = slices.DeleteFunc(r.booked, func(b booking) bool {
		return now.Sub(b.at) > bookingTTL || beat[b.node].After(b.at.Add(bookingGrace))
	})
	for i := range rows {
		for _, b := range r.booked {
			if b.node == rows[i].ID {
				rows[i].UsedVCPUs += b.req.VCPUs
				rows[i].UsedMemoryMB += b.req.MemoryMB
				rows[i].UsedDiskMB += b.req.DiskMB
				rows[i].Sandboxes++
			}
		}
	}
	snap := placement.New(rows, placement.Options{})
	seen := make(map[string]store.Node, len(rows))
	for _, n := range rows {
		seen[n.ID] = n
		old, had := r.nodes[n.ID]
		if n.State != store.NodeLost && (!had || old.State == store.NodeLost) {
			up = append(up, n.ID)
		}
		r.clientLocked(n)
	}
	r.nodes, r.snap = seen, snap
	r.mu.Unlock()
	if r.cfg.OnNodeUp != nil {
		for _, id := range up {
			r.cfg.OnNodeUp(id)
		}
	}
	return nil
}

// clientLocked returns n's client, made anew when its address changed.
func (r *Registry) clientLocked(n store.Node) orchestratorv1connect.OrchestratorServiceClient {
	c, ok := r.clients[n.ID]
	if !ok || c.url != n.URL {
		c = client{url: n.URL, c: nodeauth.NewClient(r.cfg.HTTPClient, strings.TrimRight(n.URL, "/"), r.cfg.NodeToken)}
		r.clients[n.ID] = c
	}
	return c.c
}

// Client implements api.NodeSet: the client of the node a sandbox row names.
func (r *Registry) Client(id string) (orchestratorv1connect.OrchestratorServiceClient, error) {
	r.mu.Lock()
	if c, ok := r.clients[id]; ok {
		r.mu.Unlock()
		return c.c, nil
	}
	r.mu.Unlock()
	// Registered since the last refresh (another replica placed on it).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := r.cfg.Store.GetNode(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("node %q: %w", id, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.clientLocked(n), nil
}

// noNodeError is placement's refusal as api.ErrNoNode (a 503).
type noNodeError struct{ *placement.NoNodeError }

func (noNodeError) Is(target error) bool { return target == api.ErrNoNode }

// Pick implements api.NodeSet with placement's best of K.
func (r *Registry) Pick(_ context.Context, p api.Placement) (string, error) {
	req := placement.Request{
		BuildID: p.BuildID, Runtime: p.Runtime,
		VCPUs: int(p.VCPUs), MemoryMB: int64(p.MemoryMB), DiskMB: int64(p.DiskMB), Avoid: p.Avoid,
	}
	r.mu.Lock()
	snap := r.snap
	r.mu.Unlock()
	id, err := snap.Pick(req)
	if ne := (*placement.NoNodeError)(nil); errors.As(err, &ne) {
		return "", noNodeError{ne}
	}
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	r.booked = append(r.booked, booking{node: id, at: r.cfg.Now(), req: req})
	r.mu.Unlock()
	return id, nil
}

// IDs implements api.NodeSet: the nodes not lost, which the api watches,
// reconciles and samples.
func (r *Registry) IDs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make([]string, 0, len(r.nodes))
	for id, n := range r.nodes {
		if n.State != store.NodeLost {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// Nodes returns the rows of the last refresh, by ID.
func (r *Registry) Nodes() []store.Node {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]store.Node, 0, len(r.nodes))
	for _, n := range r.nodes {
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b store.Node) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// liveStates are the sandbox states a lost node takes down with it. A
// paused sandbox's snapshot lives on its node (docs/decisions.md), so it
// goes too.
var liveStates = []store.SandboxState{
	store.StateCreating, store.StateRunning, store.StatePausing, store.StatePaused, store.StateResuming,
}

// SweepLost marks the nodes silent for LostAfter lost and reports their
// sandboxes dead with reason "node lost". Many replicas may sweep at once:
// the store hands each lost node to one of them, and a sandbox's state
// moves by compare-and-set, so each is reported once.
func (r *Registry) SweepLost(ctx context.Context) error {
	lost, err := r.cfg.Store.MarkLostNodes(ctx, r.cfg.Now().Add(-r.cfg.LostAfter), ReasonNodeLost)
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for _, n := range lost {
		r.cfg.Logger.WarnContext(ctx, "node lost: no heartbeat", "node", n.ID, "last", n.HeartbeatAt, "after", r.cfg.LostAfter)
		if err := r.killSandboxesOf(ctx, n.ID); err != nil {
			errs = append(errs, err)
		}
	}
	// A replica that crashed between marking a node lost and reporting its
	// sandboxes left them live on a lost node: report them now.
	r.mu.Lock()
	var stale []string
	for id, n := range r.nodes {
		if n.State == store.NodeLost {
			stale = append(stale, id)
		}
	}
	r.mu.Unlock()
	for _, id := range stale {
		if err := r.killSandboxesOf(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (r *Registry) killSandboxesOf(ctx context.Context, nodeID string) error {
	f := store.SandboxFilter{NodeID: nodeID, States: liveStates, Limit: 500}
	for {
		page, next, err := r.cfg.Store.ListSandboxes(ctx, f)
		if err != nil {
			return fmt.Errorf("sandboxes of lost node %s: %w", nodeID, err)
		}
		for _, sb := range page {
			if _, err := r.cfg.Store.SetSandboxState(ctx, sb.ID, []store.SandboxState{sb.State}, store.StateDead, ReasonNodeLost); err != nil {
				if !errors.Is(err, store.ErrConflict) {
					return fmt.Errorf("sandbox %s of lost node %s: %w", sb.ID, nodeID, err)
				}
				continue // moved meanwhile; the next sweep looks again
			}
			r.cfg.Logger.WarnContext(ctx, "sandbox dead", "sandbox", sb.ID, "node", nodeID, "reason", ReasonNodeLost)
			if r.cfg.OnLost != nil {
				r.cfg.OnLost(sb.ID, ReasonNodeLost)
			}
		}
		if next == "" {
			return nil
		}
		f.Next = next
	}
}
