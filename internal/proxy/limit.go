package proxy

import (
	"fmt"
	"net/http"
	"sync"
)

// DefaultMaxInFlight is how many requests one sandbox may have open through
// the proxy at once (streams and websockets count while they last): enough
// for any agent's fan-out, and a flood against one sandbox holds at most
// this many of the node's connections and goroutines.
const DefaultMaxInFlight = 512

// Limited is the proxy with a cap on each sandbox's requests in flight;
// beyond it a request is answered 429 with a Retry-After, without reaching
// the resolver or the sandbox. (The body of a request that reaches a
// sandbox is bounded by the sandbox itself: envd writes uploads to the
// sandbox's disk, whose size the template sets.)
type Limited struct {
	p   *Proxy
	max int

	mu sync.Mutex
	n  map[string]int // requests in flight by sandbox ID
}

// Limit returns p with at most maxInFlight requests in flight per sandbox
// (DefaultMaxInFlight when ≤ 0).
func (p *Proxy) Limit(maxInFlight int) *Limited {
	if maxInFlight <= 0 {
		maxInFlight = DefaultMaxInFlight
	}
	return &Limited{p: p, max: maxInFlight, n: map[string]int{}}
}

// ServeHTTP implements http.Handler.
func (l *Limited) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, _, err := l.p.Route(r)
	if err != nil {
		l.p.ServeHTTP(w, r) // answers the routing error itself
		return
	}
	l.mu.Lock()
	if l.n[id] >= l.max {
		l.mu.Unlock()
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusTooManyRequests, fmt.Sprintf("sandbox %q has %d requests in flight, the most one sandbox may have", id, l.max))
		return
	}
	l.n[id]++
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		if l.n[id]--; l.n[id] == 0 {
			delete(l.n, id)
		}
		l.mu.Unlock()
	}()
	l.p.ServeHTTP(w, r)
}
