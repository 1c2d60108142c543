package api

import (
	"context"
	"errors"
	"slices"
	"time"

	"connectrpc.com/connect"

	orchestratorv1 "github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1"
	"github.com/cocoon-run/cocoon/internal/runtime"
	"github.com/cocoon-run/cocoon/internal/store"
)

// watchNodes follows every node's Watch stream until ctx ends, so that a
// sandbox whose runtime dies is marked dead (with the node's reason) and
// its proxied requests are failed within moments, not at the next
// reconcile. A broken stream is opened again after a short pause; each
// time it is open, a reconcile of that node catches what it missed.
func (s *Server) watchNodes(ctx context.Context) {
	for _, node := range s.nodes.IDs() {
		s.WatchNode(ctx, node)
	}
}

// WatchNode follows node's Watch stream (see watchNodes) until ctx ends,
// once per node however often it is called: a fleet's registry calls it
// for every node that registers or returns after it was lost.
func (s *Server) WatchNode(ctx context.Context, node string) {
	s.deathMu.Lock()
	defer s.deathMu.Unlock()
	if s.watching[node] {
		return
	}
	if s.watching == nil {
		s.watching = map[string]bool{}
	}
	s.watching[node] = true
	go func() {
		s.watchNode(ctx, node)
		s.deathMu.Lock()
		defer s.deathMu.Unlock()
		delete(s.watching, node)
	}()
}

func (s *Server) watchNode(ctx context.Context, node string) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.watchOnce(ctx, node)
		if ctx.Err() != nil {
			return
		}
		if connect.CodeOf(err) == connect.CodeUnimplemented {
			s.logger.WarnContext(ctx, "node has no Watch: deaths are noticed by reconcile only", "node", node)
			return
		}
		s.logger.DebugContext(ctx, "node watch ended; reconnecting", "node", node, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (s *Server) watchOnce(ctx context.Context, node string) error {
	client, err := s.nodes.Client(node)
	if err != nil {
		return err
	}
	stream, err := client.Watch(ctx, connect.NewRequest(&orchestratorv1.WatchRequest{}))
	if err != nil {
		return err
	}
	defer stream.Close()
	for first := true; stream.Receive(); first = false {
		if first {
			// Subscribed: deaths before now may have gone unheard.
			go func() {
				if err := s.reconcileNode(ctx, node); err != nil && ctx.Err() == nil {
					s.logger.DebugContext(ctx, "reconcile on watch", "node", node, "err", err)
				}
			}()
		}
		n := stream.Msg().GetSandbox()
		// Kills and pauses come too, for the proxies' routes; a kill was
		// asked for (by this api or another replica), not a death.
		if n.GetState() == orchestratorv1.State_STATE_DEAD && n.GetDetail() != runtime.ReasonKilled {
			s.sandboxDied(ctx, n.GetSandboxId(), node, n.GetDetail())
		}
	}
	if err := stream.Err(); err != nil {
		return err
	}
	return errors.New("stream closed")
}

// sandboxDied marks a sandbox whose runtime died dead with reason, and
// tells the death hook (the proxy), unless the store has moved it on
// (killed, paused) meanwhile.
func (s *Server) sandboxDied(ctx context.Context, id, node, reason string) {
	if reason == "" {
		reason = "runtime exited"
	}
	live := []store.SandboxState{store.StateRunning, store.StateCreating, store.StateResuming, store.StatePausing}
	sb, err := s.store.GetSandbox(ctx, id)
	if err != nil || sb.NodeID != node || !slices.Contains(live, sb.State) {
		return
	}
	// The proxy first, before waiting for the sandbox's lock: requests
	// in flight to it would hang meanwhile (on a loaded node, with 50
	// sandboxes on 2 cores, the lock and the store write took seconds).
	s.notifyDeath(id, reason)
	unlock := s.locks.lock(id)
	defer unlock()
	if _, err := s.store.SetSandboxState(ctx, id, live, store.StateDead, reason); err != nil {
		if !errors.Is(err, store.ErrConflict) {
			s.logger.WarnContext(ctx, "mark sandbox dead", "sandbox", id, "err", err)
		}
		return
	}
	s.logger.WarnContext(ctx, "sandbox died", "sandbox", id, "node", node, "reason", reason)
	s.emit(ctx, sb, store.EventKilled, "died: "+reason)
}

// OnDeath registers f to be told about every sandbox found dead (by the
// node's watch or by reconcile), e.g. the proxy, which fails the requests
// in flight to it.
func (s *Server) OnDeath(f func(id, reason string)) {
	s.deathMu.Lock()
	defer s.deathMu.Unlock()
	s.onDeath = append(s.onDeath, f)
}

func (s *Server) notifyDeath(id, reason string) {
	s.deathMu.Lock()
	hooks := s.onDeath
	s.deathMu.Unlock()
	for _, f := range hooks {
		f(id, reason)
	}
}
