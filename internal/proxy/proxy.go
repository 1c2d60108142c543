// Package proxy routes sandbox traffic to a port inside a sandbox. A request
// names its sandbox either by the headers E2b-Sandbox-Id and E2b-Sandbox-Port
// (what the E2B SDK sends when E2B_SANDBOX_URL is set) or by its host name,
// <port>-<sandboxID>.<domain>. Responses, long-lived streams and websocket
// upgrades pass through unbuffered.
package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cocoon-run/cocoon/internal/metrics"
)

// Errors a Resolver returns; the proxy maps them to statuses.
var (
	// ErrNotFound: no such sandbox (or it was killed).
	ErrNotFound = errors.New("sandbox not found")
	// ErrPaused: the sandbox is paused and was not created with auto-resume.
	ErrPaused = errors.New("sandbox is paused")
)

// Resolver finds where a sandbox's ports are reachable from this host,
// resuming it first when it is paused and asked for auto-resume.
type Resolver interface {
	Resolve(ctx context.Context, sandboxID string) (Target, error)
}

// Target is where a sandbox runs now.
type Target struct {
	// Addr is the sandbox's address as seen from this host.
	Addr string
	// Epoch changes whenever the sandbox is (re)started, e.g. by a resume.
	// Idle connections are never reused across epochs: a connection opened
	// before a pause is dead after the resume even when the address is the
	// same, and the slot's conntrack no longer knows it (requests on it
	// would hang rather than fail).
	Epoch int64
	// TrafficToken, when set, must come with every request (see allow).
	TrafficToken string
	// EnvdPort and EnvdToken: a request to envd's port with envd's own
	// token passes without the traffic token (see allow).
	EnvdPort  int
	EnvdToken string
}

// Proxy is an http.Handler.
type Proxy struct {
	resolver Resolver
	domain   string
	log      *slog.Logger
	rp       *httputil.ReverseProxy

	// maxInFlight caps each sandbox's requests in flight (0: no cap; see
	// Limit).
	maxInFlight int
	// metrics counts the errors the proxy answers (nil: none; see Observe).
	metrics *metrics.Proxy

	mu       sync.Mutex
	inflight map[string]map[*flight]struct{} // by sandbox ID
	dead     map[string]string               // sandbox ID -> reason (see Fail)
	deadFIFO []string                        // dead, oldest first, to bound it
}

// flight is one request being proxied.
type flight struct{ cancel context.CancelCauseFunc }

// maxDead bounds the sandboxes Fail remembers; older ones are answered by
// the resolver (the store says dead: 404).
const maxDead = 4096

// DeadError is why a request to a dead sandbox failed; a Resolver returns
// it for a sandbox it knows dead, and the proxy answers 502 with it.
type DeadError struct{ ID, Reason string }

func (e *DeadError) Error() string {
	return fmt.Sprintf("sandbox %q is dead: %s", e.ID, e.Reason)
}

// Fail ends every request in flight to sandbox id, streams included, and
// answers the ones that follow with 502 naming the sandbox and reason: its
// runtime died, and a connection to its address would hang rather than
// fail (nothing answers there any more, not even with a reset).
func (p *Proxy) Fail(id, reason string) {
	err := &DeadError{ID: id, Reason: reason}
	p.mu.Lock()
	if _, ok := p.dead[id]; !ok {
		p.deadFIFO = append(p.deadFIFO, id)
		if len(p.deadFIFO) > maxDead {
			delete(p.dead, p.deadFIFO[0])
			p.deadFIFO = p.deadFIFO[1:]
		}
	}
	p.dead[id] = reason
	flights := p.inflight[id]
	delete(p.inflight, id)
	p.mu.Unlock()
	p.invalidate(id)
	for f := range flights {
		f.cancel(err)
	}
	if len(flights) > 0 {
		p.log.Info("failed requests in flight to a dead sandbox", "sandbox", id, "reason", reason, "requests", len(flights))
	}
}

// errTooMany refuses a request beyond a sandbox's cap (see Limit).
type errTooMany struct {
	id  string
	max int
}

func (e *errTooMany) Error() string {
	return fmt.Sprintf("sandbox %q has %d requests in flight, the most one sandbox may have", e.id, e.max)
}

// track registers a request to sandbox id; it returns the request's
// context, cancelled by Fail, and the function that ends the tracking.
// A sandbox already known dead gives its error instead, and one with
// maxInFlight requests in flight an *errTooMany.
func (p *Proxy) track(ctx context.Context, id string) (context.Context, func(), error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if reason, ok := p.dead[id]; ok {
		return nil, nil, &DeadError{ID: id, Reason: reason}
	}
	if p.maxInFlight > 0 && len(p.inflight[id]) >= p.maxInFlight {
		return nil, nil, &errTooMany{id: id, max: p.maxInFlight}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	f := &flight{cancel: cancel}
	if p.inflight[id] == nil {
		p.inflight[id] = map[*flight]struct{}{}
	}
	p.inflight[id][f] = struct{}{}
	return ctx, func() {
		p.mu.Lock()
		delete(p.inflight[id], f)
		if len(p.inflight[id]) == 0 {
			delete(p.inflight, id)
		}
		p.mu.Unlock()
		cancel(nil)
	}, nil
}

type targetKey struct{}

type target struct {
	id   string       // the sandbox
	port int          // the sandbox's port
	host string       // ip:port
	key  string       // names the connection pool: the sandbox and its address
	body *requestBody // nil without one, or over HTTP/2
}

// New returns a proxy. domain is the suffix of host-routed names ("" to
// accept any suffix).
func New(r Resolver, domain string, log *slog.Logger) *Proxy {
	if log == nil {
		log = slog.Default()
	}
	p := &Proxy{resolver: r, domain: strings.TrimPrefix(domain, "."), log: log,
		inflight: map[string]map[*flight]struct{}{}, dead: map[string]string{}}
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		// Idle connections are pooled per sandbox and address (the URL's
		// host is target.key), not per address alone: slot addresses are
		// reused, and a connection kept from a killed sandbox would reach
		// the next sandbox in the slot, which resets it.
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if t, ok := ctx.Value(targetKey{}).(target); ok {
				addr = t.host
			}
			return dialer.DialContext(ctx, network, addr)
		},
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		// Sandboxes speak HTTP/1.1 and h2c; keep it to HTTP/1.1 towards them.
		ForceAttemptHTTP2: false,
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			t := pr.In.Context().Value(targetKey{}).(target)
			pr.SetURL(&url.URL{Scheme: "http", Host: t.key})
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport:     transport,
		FlushInterval: -1, // stream everything as it comes
		ModifyResponse: func(resp *http.Response) error {
			if resp.StatusCode != http.StatusSwitchingProtocols {
				closeUnlessRead(resp.Request, resp.Header)
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			closeUnlessRead(r, w.Header())
			var dead *DeadError
			if errors.As(context.Cause(r.Context()), &dead) {
				p.fail(w, "dead", http.StatusBadGateway, dead.Error())
				return
			}
			t := r.Context().Value(targetKey{}).(target)
			p.invalidate(t.id) // the route may be stale: read it again
			p.log.Debug("proxy upstream error", "sandbox", t.id, "err", err)
			p.fail(w, "upstream", http.StatusBadGateway, fmt.Sprintf("sandbox %q did not answer on port %d: %s", t.id, t.port, upstreamReason(err, t)))
		},
	}
	return p
}

// Route extracts the sandbox ID and port a request is for.
func (p *Proxy) Route(r *http.Request) (id string, port int, err error) {
	if id = r.Header.Get("E2b-Sandbox-Id"); id != "" {
		ps := r.Header.Get("E2b-Sandbox-Port")
		port, err = strconv.Atoi(ps)
		if err != nil || port <= 0 || port > 65535 {
			return "", 0, fmt.Errorf("invalid E2b-Sandbox-Port %q", ps)
		}
		return id, port, nil
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	label, rest, ok := strings.Cut(host, ".")
	if !ok || (p.domain != "" && rest != p.domain) {
		return "", 0, errors.New("no sandbox named: send E2b-Sandbox-Id and E2b-Sandbox-Port, or use the host <port>-<sandboxID>." + p.domain)
	}
	ps, id, ok := strings.Cut(label, "-")
	if !ok || id == "" {
		return "", 0, fmt.Errorf("host %q is not <port>-<sandboxID>.<domain>", r.Host)
	}
	port, err = strconv.Atoi(ps)
	if err != nil || port <= 0 || port > 65535 {
		return "", 0, fmt.Errorf("invalid port in host %q", r.Host)
	}
	return id, port, nil
}

// ServeHTTP forwards the request to the sandbox.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/health" && r.Header.Get("E2b-Sandbox-Id") == "" && !strings.Contains(r.Host, "-") {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	id, port, err := p.Route(r)
	if err != nil {
		p.fail(w, "bad_route", http.StatusBadRequest, err.Error())
		return
	}
	ctx, done, err := p.track(r.Context(), id)
	var tooMany *errTooMany
	switch {
	case errors.As(err, &tooMany):
		w.Header().Set("Retry-After", "1")
		p.fail(w, "limited", http.StatusTooManyRequests, err.Error())
		return
	case err != nil:
		p.fail(w, "dead", http.StatusBadGateway, err.Error())
		return
	}
	defer done()
	t, err := p.resolver.Resolve(ctx, id)
	addr := t.Addr
	var dead *DeadError
	switch {
	case errors.As(err, &dead):
		p.fail(w, "dead", http.StatusBadGateway, dead.Error())
		return
	case errors.Is(err, ErrNotFound):
		p.fail(w, "not_found", http.StatusNotFound, fmt.Sprintf("sandbox %q not found", id))
		return
	case errors.Is(err, ErrPaused):
		p.fail(w, "paused", http.StatusConflict, fmt.Sprintf("sandbox %q is paused; resume it with Sandbox.connect (or create it with auto-resume)", id))
		return
	case err != nil:
		p.fail(w, "unreachable", http.StatusBadGateway, fmt.Sprintf("sandbox %q is not reachable: %v", id, err))
		return
	}
	if !allow(w, r, t, port) {
		p.metrics.Error("denied")
		return
	}
	host := net.JoinHostPort(addr, strconv.Itoa(port))
	key := net.JoinHostPort(fmt.Sprintf("%s.%d.%s", strings.ToLower(id), t.Epoch,
		strings.NewReplacer(".", "-", ":", "-").Replace(addr)), strconv.Itoa(port))
	tgt := target{id: id, port: port, host: host, key: key}
	if r.ProtoMajor == 1 && r.Body != nil && r.Body != http.NoBody {
		tgt.body = &requestBody{ReadCloser: r.Body}
	}
	out := r.WithContext(context.WithValue(ctx, targetKey{}, tgt))
	if tgt.body != nil {
		out.Body = tgt.body
	}
	// The sandbox may answer (a Connect stream starts) before the transport
	// has finished with the request body; an HTTP/1 server closes the inbound
	// body when the response starts, the transport's last read of it fails
	// and the upstream connection is torn down mid-stream (golang/go#40747).
	// Full duplex keeps the body readable. HTTP/2 is full duplex already.
	rc := http.NewResponseController(w)
	_ = rc.EnableFullDuplex()
	if tgt.body != nil {
		defer tgt.body.stop(rc) // on a panic too (ReverseProxy aborts a broken stream with one)
		defer tgt.body.stopWhenDone(ctx, rc)()
	}
	p.rp.ServeHTTP(w, out)
}

// requestBody is an HTTP/1 request body on its way to a sandbox.
//
// In full duplex the server leaves a body the sandbox did not read to the
// end (it failed, died or answered early) to be drained after the handler
// returns; a drain that reaches the end starts the connection's background
// read after the server stopped watching for one, and reading the next
// request on the connection panics with "invalid concurrent Body.Read call"
// (golang/go#68560). So a response that starts before the body's end closes
// the connection after it ("Connection: close"): nothing reads the
// connection after the drain. And the transport, which reads the body in a
// goroutine of its own, stops reading it before the handler ends (stop): a
// read that came back after it could start that background read while the
// server waited for the connection's reads to end, and the connection hung.
type requestBody struct {
	io.ReadCloser
	done    atomic.Bool // the transport read the body to its end
	stopped atomic.Bool // the handler is ending: no more reads
	mu      sync.Mutex  // held by a read
}

var errHandlerDone = errors.New("the request is over")

func (b *requestBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped.Load() {
		return 0, errHandlerDone
	}
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.done.Store(true)
	}
	return n, err
}

// stop ends the transport's reads of the body; it returns when none is in
// progress. One waiting for the client is cut short by a read deadline (the
// connection closes after such a response: the body was not read to its end).
func (b *requestBody) stop(rc *http.ResponseController) {
	b.stopped.Store(true)
	if !b.mu.TryLock() {
		_ = rc.SetReadDeadline(time.Now())
		b.mu.Lock()
	}
	defer b.mu.Unlock()
	if b.done.Load() {
		return
	}
	// What the client still sends is then read and dropped for a moment
	// (net/http drains a short rest of a body after the handler): a
	// connection closed on unread data resets, and a reset can cost the
	// client the answer. A client that sends nothing more is not waited
	// for longer than that (the drain waited for it for ever).
	_ = rc.SetReadDeadline(time.Now().Add(drainAfterStop))
}

// drainAfterStop is how long the rest of a stopped body is read, like
// net/http's wait before it closes a connection it did not read to the end.
const drainAfterStop = 500 * time.Millisecond

// stopWhenDone stops the body's reads as soon as ctx ends (Fail, or the
// client went away), and returns the function that undoes that, waiting
// for a stop under way: the handler calls it before it returns, after
// which the connection may serve another request. Without it a request
// Fail ended hung while its client was slow to send the rest of its body,
// or idle: the transport returns only once its body writer has stopped
// (net/http's mapRoundTripError waits for the write loop), and the writer
// was waiting for the client (TestSandboxDiesMidRequest: 10 s, for ever
// in production, instead of at once).
func (b *requestBody) stopWhenDone(ctx context.Context, rc *http.ResponseController) func() {
	stopped := make(chan struct{})
	cancel := context.AfterFunc(ctx, func() {
		defer close(stopped)
		b.stop(rc)
	})
	return func() {
		if !cancel() {
			<-stopped
		}
	}
}

// closeUnlessRead sets "Connection: close" on a response that starts
// before its request's body was read to the end (see requestBody).
func closeUnlessRead(r *http.Request, h http.Header) {
	if t, ok := r.Context().Value(targetKey{}).(target); ok && t.body != nil && !t.body.done.Load() {
		h.Set("Connection", "close")
	}
}

// upstreamReason says why a sandbox did not answer without its internal
// address, which net errors carry ("dial tcp 10.11.0.2:49983: ...").
func upstreamReason(err error, t target) string {
	switch {
	case errors.Is(err, context.Canceled):
		return "the request was cancelled"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed):
		return "the connection closed before an answer"
	}
	// The innermost net error says what happened without the addresses
	// ("connect: connection refused").
	var op *net.OpError
	for errors.As(err, &op) && op.Err != nil {
		if op.Timeout() {
			return "timed out"
		}
		err = op.Err
	}
	return strings.NewReplacer(t.host, "", t.key, "").Replace(err.Error())
}

// Observe has the errors the proxy answers counted by kind in m, and
// returns p. Call it before serving.
func (p *Proxy) Observe(m *metrics.Proxy) *Proxy {
	p.metrics = m
	return p
}

// fail answers an error of kind (a cocoon_proxy_errors_total label).
func (p *Proxy) fail(w http.ResponseWriter, kind string, status int, msg string) {
	p.metrics.Error(kind)
	writeError(w, status, msg)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"code": status, "message": msg})
}
