package proxy

// DefaultMaxInFlight is how many requests one sandbox may have open through
// the proxy at once (streams and websockets count while they last): enough
// for any agent's fan-out, and a flood against one sandbox holds at most
// this many of the node's connections and goroutines.
const DefaultMaxInFlight = 512

// Limit caps each sandbox's requests in flight at maxInFlight
// (DefaultMaxInFlight when ≤ 0) and returns p. Beyond it a request is
// answered 429 with a Retry-After, without reaching the resolver or the
// sandbox; the count is the one Fail ends (track). (The body of a request
// that reaches a sandbox is bounded by the sandbox itself: envd writes
// uploads to the sandbox's disk, whose size the template sets.) Call it
// before serving.
func (p *Proxy) Limit(maxInFlight int) *Proxy {
	if maxInFlight <= 0 {
		maxInFlight = DefaultMaxInFlight
	}
	p.maxInFlight = maxInFlight
	return p
}
