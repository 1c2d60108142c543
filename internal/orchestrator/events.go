package orchestrator

import "sync"

// events fans sandbox state changes out to the node's watchers (the Watch
// RPC): deaths the node did not start itself, and kills (detail
// runtime.ReasonKilled) and pauses on request, after which the sandbox's
// address is no longer its own. A watcher that
// does not keep up loses events rather than stalling the node; reconcile
// still settles what it missed.
type events struct {
	mu   sync.Mutex
	subs map[chan Sandbox]struct{}
}

func newEvents() *events { return &events{subs: map[chan Sandbox]struct{}{}} }

// subscribe returns a channel of events and the function that ends the
// subscription.
func (ev *events) subscribe() (<-chan Sandbox, func()) {
	ch := make(chan Sandbox, 256)
	ev.mu.Lock()
	ev.subs[ch] = struct{}{}
	ev.mu.Unlock()
	return ch, func() {
		ev.mu.Lock()
		delete(ev.subs, ch)
		ev.mu.Unlock()
	}
}

func (ev *events) publish(sb Sandbox) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	for ch := range ev.subs {
		select {
		case ch <- sb:
		default:
		}
	}
}

// Subscribe returns the node's sandbox events (deaths, kills, pauses) as
// they happen, and
// the function that ends the subscription.
func (o *Orchestrator) Subscribe() (<-chan Sandbox, func()) { return o.events.subscribe() }
