package proxy

import (
	"context"
	"errors"
	"sync"
	"time"
)

// DefaultRouteTTL bounds how long a RouteCache keeps a route without news
// of its sandbox: the events that drop routes come over the nodes' Watch
// streams, and one lost while a stream was down is made up for by then.
const DefaultRouteTTL = 10 * time.Second

// maxRoutes bounds a RouteCache; at the bound it starts over.
const maxRoutes = 100_000

// RouteCache is a Resolver that remembers the targets of running
// sandboxes, so that a fleet's proxy reads a sandbox's route from the
// store once rather than on every request. A route goes when the
// sandbox's node reports it dead, killed or paused (Proxy.Fail,
// Proxy.Drop), when a request to it fails upstream, when Clear is called
// (a node's event stream was reopened: events may have been missed), and
// after its TTL at the latest. Errors (not found, paused, dead) are not
// cached.
type RouteCache struct {
	inner Resolver
	ttl   time.Duration

	mu     sync.Mutex
	routes map[string]cachedRoute
	gen    uint64 // bumped by every drop: a resolve that began before it is not cached
}

type cachedRoute struct {
	t  Target
	at time.Time
}

// NewRouteCache caches inner's routes for at most ttl (<= 0: DefaultRouteTTL).
func NewRouteCache(inner Resolver, ttl time.Duration) *RouteCache {
	if ttl <= 0 {
		ttl = DefaultRouteTTL
	}
	return &RouteCache{inner: inner, ttl: ttl, routes: map[string]cachedRoute{}}
}

// Resolve implements Resolver.
func (c *RouteCache) Resolve(ctx context.Context, id string) (Target, error) {
	now := time.Now()
	c.mu.Lock()
	r, ok := c.routes[id]
	gen := c.gen
	c.mu.Unlock()
	if ok && now.Sub(r.at) < c.ttl {
		return r.t, nil
	}
	t, err := c.inner.Resolve(ctx, id)
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case err != nil:
		delete(c.routes, id)
	case c.gen == gen:
		// A drop while the store was read may have been about this
		// sandbox: the route read before it is not kept.
		if len(c.routes) >= maxRoutes {
			clear(c.routes)
		}
		c.routes[id] = cachedRoute{t: t, at: now}
	}
	return t, err
}

// Invalidate drops sandbox id's route.
func (c *RouteCache) Invalidate(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.routes, id)
	c.gen++
}

// Clear drops every route.
func (c *RouteCache) Clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.routes)
	c.gen++
}

// invalidate drops id's route when the proxy's resolver caches routes.
func (p *Proxy) invalidate(id string) {
	if c, ok := p.resolver.(interface{ Invalidate(string) }); ok {
		c.Invalidate(id)
	}
}

// errDropped ends the requests in flight to a sandbox killed or paused.
var errDropped = errors.New("the sandbox was killed or paused")

// Drop ends every request in flight to sandbox id, streams included, and
// forgets its route, without remembering it dead: it was killed or paused
// on request, and its address goes back to its node's pool (a connection
// to it would hang, or reach the sandbox that gets the address next). What
// follows is resolved again (404 for a killed sandbox, 409 or an
// auto-resume for a paused one).
func (p *Proxy) Drop(id string) {
	p.mu.Lock()
	flights := p.inflight[id]
	delete(p.inflight, id)
	p.mu.Unlock()
	p.invalidate(id)
	for f := range flights {
		f.cancel(errDropped)
	}
}
