package api

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"

	orchestratorv1 "github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1"
	"github.com/cocoon-run/cocoon/internal/store"
)

// expire enforces deadlines: an expired running sandbox is paused when it
// asked for that (autoPause / onTimeout: pause), otherwise killed. The store
// holds the deadlines, so a restarted api enforces them as before.
func (s *Server) expire(ctx context.Context) error {
	now := s.now()
	due, err := s.store.ListExpired(ctx, now)
	if err != nil {
		return fmt.Errorf("list expired sandboxes: %w", err)
	}
	var errs []error
	for _, sb := range due {
		if err := s.expireOne(ctx, sb.ID, now); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *Server) expireOne(ctx context.Context, id string, now time.Time) error {
	unlock := s.locks.lock(id)
	defer unlock()
	// Re-read under the lock: a setTimeout may have moved the deadline.
	sb, err := s.store.GetSandbox(ctx, id)
	if err != nil {
		return fmt.Errorf("get expired sandbox %s: %w", id, err)
	}
	if sb.State != store.StateRunning || sb.EndAt.After(now) {
		return nil
	}
	if sb.OnTimeout == store.OnTimeoutPause {
		err := s.pause(ctx, sb)
		if err == nil {
			return nil
		}
		// The deadline must hold even when the snapshot fails.
		s.logger.WarnContext(ctx, "pause on timeout failed; killing", "sandbox", id, "err", err)
		if sb, err = s.store.GetSandbox(ctx, id); err != nil {
			return fmt.Errorf("get expired sandbox %s: %w", id, err)
		}
	}
	if err := s.kill(ctx, sb, store.StateKilled, "timeout"); err != nil {
		return fmt.Errorf("kill expired sandbox %s: %w", id, err)
	}
	s.logger.InfoContext(ctx, "sandbox expired", "sandbox", id)
	return nil
}

// running lists every sandbox in the given states on node (all nodes if "").
func (s *Server) sandboxesOn(ctx context.Context, node string, states ...store.SandboxState) ([]store.Sandbox, error) {
	var out []store.Sandbox
	f := store.SandboxFilter{NodeID: node, States: states, Limit: 500}
	for {
		page, next, err := s.store.ListSandboxes(ctx, f)
		if err != nil {
			return nil, fmt.Errorf("list sandboxes: %w", err)
		}
		for _, sb := range page {
			// The filter's empty NodeID means any node; keep exact matches.
			if node == "" || sb.NodeID == node {
				out = append(out, sb)
			}
		}
		if next == "" {
			return out, nil
		}
		f.Next = next
	}
}

// sampleMetrics asks each node for a sample of each of its running
// sandboxes and stores them; old samples are pruned.
func (s *Server) sampleMetrics(ctx context.Context) error {
	var errs []error
	var samples []store.Metric
	for _, node := range s.nodes.IDs() {
		client, err := s.nodes.Client(node)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sbs, err := s.sandboxesOn(ctx, node, store.StateRunning)
		if err != nil {
			return err
		}
		for _, sb := range sbs {
			nctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			resp, err := client.Metrics(nctx, connect.NewRequest(&orchestratorv1.MetricsRequest{SandboxId: sb.ID}))
			cancel()
			if err != nil {
				// A sandbox may die or pause between listing and sampling.
				s.logger.DebugContext(ctx, "sample metrics", "sandbox", sb.ID, "err", err)
				continue
			}
			m := resp.Msg
			ts := s.now()
			if m.GetTimestamp() != nil {
				ts = m.GetTimestamp().AsTime()
			}
			samples = append(samples, store.Metric{
				SandboxID: sb.ID, Timestamp: ts.Truncate(time.Millisecond),
				CPUCount: int(m.GetCpuCount()), CPUUsedPct: m.GetCpuUsedPct(),
				MemUsed: int64(m.GetMemUsed()), MemTotal: int64(m.GetMemTotal()),
				DiskUsed: int64(m.GetDiskUsed()), DiskTotal: int64(m.GetDiskTotal()),
			})
		}
	}
	if len(samples) > 0 {
		if err := s.store.InsertMetrics(ctx, samples...); err != nil {
			errs = append(errs, fmt.Errorf("store metrics: %w", err))
		}
	}
	if _, err := s.store.PruneMetrics(ctx, s.now().Add(-s.cfg.MetricsRetention)); err != nil {
		errs = append(errs, fmt.Errorf("prune metrics: %w", err))
	}
	return errors.Join(errs...)
}

// reconcile compares the store with what each node reports:
//   - a sandbox the store has running but the node lost, or reports dead,
//     becomes dead;
//   - a sandbox stuck in a transitional state (an api crashed mid-operation)
//     is settled from the node's view once it is older than NodeTimeout;
//   - a sandbox the node runs but the store has not (or has killed) is killed
//     on the node, so nothing leaks.
func (s *Server) reconcile(ctx context.Context) error {
	var errs []error
	for _, node := range s.nodes.IDs() {
		if err := s.reconcileNode(ctx, node); err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", node, err))
		}
	}
	return errors.Join(errs...)
}

func (s *Server) reconcileNode(ctx context.Context, node string) error {
	client, err := s.nodes.Client(node)
	if err != nil {
		return err
	}
	// The store first, the node second: a sandbox the store has running
	// was on the node before the node was asked, so its absence from the
	// answer means it is gone. The other order declared a sandbox that
	// finished starting between the two reads dead (a create's first
	// request got 404). What changes after the store read is caught by
	// settle's version check and killOrphan's second look.
	ours, err := s.sandboxesOn(ctx, node,
		store.StateCreating, store.StateRunning, store.StatePausing, store.StateResuming)
	if err != nil {
		return err
	}
	nctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	resp, err := client.List(nctx, connect.NewRequest(&orchestratorv1.ListRequest{}))
	cancel()
	if err != nil {
		return fmt.Errorf("list node sandboxes: %w", err)
	}
	onNode := map[string]*orchestratorv1.Sandbox{}
	for _, n := range resp.Msg.GetSandboxes() {
		onNode[n.GetSandboxId()] = n
	}
	known := map[string]bool{}
	stale := s.now().Add(-s.cfg.NodeTimeout)
	var errs []error
	for _, sb := range ours {
		known[sb.ID] = true
		n := onNode[sb.ID]
		if sb.State != store.StateRunning && sb.UpdatedAt.After(stale) && !s.orphaned(sb) {
			continue // an operation may be in flight in some api process
		}
		if err := s.settle(ctx, sb, n); err != nil {
			errs = append(errs, err)
		}
	}
	for id := range onNode {
		if known[id] {
			continue
		}
		if err := s.killOrphan(ctx, client, id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// orphaned tells whether sb's transition (creating, pausing, resuming)
// was begun by an api process that is gone: it started before this one
// and this one holds no lock on it. The node has settled its side at its
// own start (a pause finished or rolled back, a create cleaned), so its
// answer is the truth. With several api processes on one store, one
// restarting may settle another's operation in flight; that operation
// then fails its version check and reports the conflict.
func (s *Server) orphaned(sb store.Sandbox) bool {
	return sb.UpdatedAt.Before(s.started) && !s.locks.held(sb.ID)
}

// settle brings one stored sandbox in line with the node's report n (nil
// when the node does not have it).
func (s *Server) settle(ctx context.Context, sb store.Sandbox, n *orchestratorv1.Sandbox) error {
	unlock := s.locks.lock(sb.ID)
	defer unlock()
	cur, err := s.store.GetSandbox(ctx, sb.ID)
	if err != nil || cur.Version != sb.Version {
		return nil // it moved on meanwhile; the next round looks again
	}
	from := []store.SandboxState{sb.State}
	alive := n != nil && n.GetState() == orchestratorv1.State_STATE_RUNNING
	switch {
	case alive && sb.State == store.StateRunning:
		return nil
	case alive: // creating/resuming finished, or a pause never happened
		// Where it runs comes from the node: a create the crash cut short
		// had not recorded an address yet (the proxy then failed every
		// request to a sandbox listed running: the e2e kill -9 during
		// creates), and a resume's is its new slot's, not the old one.
		_, err = store.Modify(ctx, s.store, sb.ID, func(c *store.Sandbox) error {
			if c.State != sb.State {
				return store.ErrConflict
			}
			if sb.State == store.StateResuming {
				// Its deadline is the one the resume would have set.
				c.StartedAt = s.now()
				if end := c.StartedAt.Add(s.cfg.DefaultTimeout); end.After(c.EndAt) {
					c.EndAt = end
				}
			}
			c.State, c.StateReason = store.StateRunning, ""
			if n.GetRuntime() != "" {
				c.Runtime = n.GetRuntime()
			}
			if n.GetAddress() != "" {
				c.NodeData = nodeData(n)
			}
			return nil
		})
	case n != nil && n.GetState() == orchestratorv1.State_STATE_PAUSED && (sb.State == store.StatePausing || sb.State == store.StateResuming):
		// A pause that finished, or a resume that never did.
		_, err = store.Modify(ctx, s.store, sb.ID, func(c *store.Sandbox) error {
			if c.State != sb.State {
				return store.ErrConflict
			}
			c.State, c.SnapshotURI = store.StatePaused, n.GetSnapshot()
			return nil
		})
	default:
		reason := "sandbox lost by its node"
		if n != nil && n.GetDetail() != "" {
			reason = n.GetDetail()
		}
		s.logger.WarnContext(ctx, "sandbox dead", "sandbox", sb.ID, "node", sb.NodeID, "reason", reason)
		if _, err = s.store.SetSandboxState(ctx, sb.ID, from, store.StateDead, reason); err == nil {
			s.notifyDeath(sb.ID, reason)
		}
	}
	if err != nil && !errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("settle sandbox %s: %w", sb.ID, err)
	}
	return nil
}

// killOrphan kills a sandbox a node runs that the store does not list as
// live on that node, unless it was just created (its row may be in flight).
func (s *Server) killOrphan(ctx context.Context, client interface {
	Kill(context.Context, *connect.Request[orchestratorv1.KillRequest]) (*connect.Response[orchestratorv1.KillResponse], error)
}, id string) error {
	sb, err := s.store.GetSandbox(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return fmt.Errorf("get sandbox %s: %w", id, err)
	default:
		if _, live := publicState(sb.State); live {
			return nil // live elsewhere in the store's view (e.g. moved node); leave it
		}
	}
	s.logger.WarnContext(ctx, "killing orphan sandbox on node", "sandbox", id)
	nctx, cancel := context.WithTimeout(ctx, s.cfg.NodeTimeout)
	defer cancel()
	if _, err := client.Kill(nctx, connect.NewRequest(&orchestratorv1.KillRequest{SandboxId: id})); err != nil {
		return fmt.Errorf("kill orphan %s: %w", id, err)
	}
	return nil
}
