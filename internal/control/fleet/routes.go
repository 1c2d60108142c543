package fleet

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"connectrpc.com/connect"

	orchestratorv1 "github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1"
	"github.com/cocoon-run/cocoon/internal/runtime"
)

// RouteWatch keeps a proxy that is not an api (`cocoon proxy --fleet`)
// told about the sandboxes of every node, as the api's own watch tells the
// proxy of `cocoon server`: it follows each node's Watch stream and hands
// on deaths (Died: the proxy fails the sandbox's requests, streams
// included) and kills and pauses (Gone: the proxy drops the route and
// cuts the streams). It writes nothing: the api records the deaths.
type RouteWatch struct {
	Registry *Registry
	Died     func(id, reason string)
	Gone     func(id string)
	// Resync is called each time a node's stream is (re)opened: events
	// may have been missed meanwhile (the route cache starts over).
	Resync func()
	Logger *slog.Logger

	mu       sync.Mutex
	watching map[string]bool
}

// Watch follows node's stream until ctx ends, once per node however often
// it is called (the registry's OnNodeUp).
func (w *RouteWatch) Watch(ctx context.Context, node string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.watching[node] {
		return
	}
	if w.watching == nil {
		w.watching = map[string]bool{}
	}
	w.watching[node] = true
	go func() {
		backoff := 100 * time.Millisecond
		for ctx.Err() == nil {
			err := w.once(ctx, node)
			if ctx.Err() != nil {
				break
			}
			if connect.CodeOf(err) == connect.CodeUnimplemented {
				w.Logger.WarnContext(ctx, "node has no Watch: the proxy learns of its sandboxes' ends from the store only", "node", node)
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		delete(w.watching, node)
	}()
}

func (w *RouteWatch) once(ctx context.Context, node string) error {
	client, err := w.Registry.Client(node)
	if err != nil {
		return err
	}
	stream, err := client.Watch(ctx, connect.NewRequest(&orchestratorv1.WatchRequest{}))
	if err != nil {
		return err
	}
	defer stream.Close()
	for first := true; stream.Receive(); first = false {
		if first && w.Resync != nil {
			w.Resync()
		}
		n := stream.Msg().GetSandbox()
		switch {
		case n == nil:
		case n.GetState() == orchestratorv1.State_STATE_DEAD && n.GetDetail() == runtime.ReasonKilled,
			n.GetState() == orchestratorv1.State_STATE_PAUSED:
			w.Gone(n.GetSandboxId())
		case n.GetState() == orchestratorv1.State_STATE_DEAD:
			reason := n.GetDetail()
			if reason == "" {
				reason = runtime.ReasonExited
			}
			w.Died(n.GetSandboxId(), reason)
		}
	}
	if err := stream.Err(); err != nil {
		return err
	}
	return errors.New("stream closed")
}
