// Package api is Cocoon's E2B-compatible REST control plane: auth (teams,
// hashed API keys, the admin token), request validation against
// api/openapi.yaml, the sandbox lifecycle (create, list, info, timeout, pause,
// connect/resume, kill, metrics, logs), templates, and the admin endpoints.
//
// The store is the source of truth; nodes are reached only through the
// orchestrator RPC (see NodeSet). Server.Run drives the background loops:
// expiry, metrics sampling and reconciliation with the nodes.
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/getkin/kin-openapi/openapi3"

	apispec "github.com/cocoon-run/cocoon/api"
	"github.com/cocoon-run/cocoon/internal/metrics"
	"github.com/cocoon-run/cocoon/internal/store"
)

// EnvdVersion is the envd version reported to SDKs. The SDK switches
// features off below 0.6.4.
const EnvdVersion = "0.6.4"

// Config tunes the api. Zero values take the defaults noted on each field.
type Config struct {
	// DefaultTimeout applies when a create or connect names no timeout (300 s).
	DefaultTimeout time.Duration
	// MaxTimeout caps every timeout; longer requests are clamped, not
	// rejected, so SDK code written for other limits keeps working (24 h).
	MaxTimeout time.Duration
	// RateLimit is the sustained requests per second allowed per API key;
	// RateBurst the bucket size. RateLimit < 0 disables limiting (default 20/s, burst 40).
	RateLimit float64
	RateBurst int
	// BodyLimit caps request bodies (1 MiB); larger ones get 413.
	BodyLimit int64
	// Domain is returned as the sandboxes' domain (E2B's E2B_DOMAIN); may be empty.
	Domain string
	// AdminToken guards /admin/*; empty disables the admin endpoints (401).
	AdminToken string
	// BaseTemplate is the public template every team can use ("base").
	BaseTemplate string
	// LifecycleInterval is how often expirations are enforced (1 s).
	LifecycleInterval time.Duration
	// MetricsInterval is how often running sandboxes are sampled (5 s);
	// MetricsRetention how long samples are kept (24 h).
	MetricsInterval  time.Duration
	MetricsRetention time.Duration
	// ReconcileInterval is how often the store is compared with the nodes (30 s).
	ReconcileInterval time.Duration
	// NodeTimeout bounds one RPC to a node (2 min; creates and resumes restore snapshots).
	NodeTimeout time.Duration
	// TemplateFilesDir keeps the uploaded COPY archives of template builds
	// (default: a directory under the system's temp dir).
	TemplateFilesDir string
	// MaxUploadBytes caps one uploaded COPY archive (512 MiB).
	MaxUploadBytes int64
	// BuildTimeout bounds a whole template build (30 min); ReadyTimeout the
	// wait for a template's ready command (2 min).
	BuildTimeout time.Duration
	ReadyTimeout time.Duration
	// MaxCPUCount and MaxMemoryMB bound a template's resources (400 beyond):
	// a sandbox larger than a node cannot start. Defaults: this host's
	// memory, the node's on one host, and its CPUs but at least 8 (a vCPU
	// is a thread and can be oversubscribed; the SDK's default is 2).
	MaxCPUCount int
	MaxMemoryMB int
	// Metrics receives the api's Prometheus observations; nil: none.
	Metrics *metrics.API
	// WebhookPoll is how often queued webhook deliveries are looked at
	// besides each new event (1 s); WebhookTimeout bounds one attempt
	// (10 s); a failed attempt is retried after WebhookBackoff (1 s),
	// doubling, at most 5 min apart, WebhookMaxAttempts times in all (20:
	// about an hour and a half).
	WebhookPoll        time.Duration
	WebhookTimeout     time.Duration
	WebhookBackoff     time.Duration
	WebhookMaxAttempts int
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.DefaultTimeout, 300*time.Second)
	def(&c.MaxTimeout, 24*time.Hour)
	def(&c.LifecycleInterval, time.Second)
	def(&c.MetricsInterval, 5*time.Second)
	def(&c.MetricsRetention, 24*time.Hour)
	def(&c.ReconcileInterval, 30*time.Second)
	def(&c.NodeTimeout, 2*time.Minute)
	def(&c.BuildTimeout, 30*time.Minute)
	def(&c.ReadyTimeout, 2*time.Minute)
	def(&c.WebhookPoll, time.Second)
	def(&c.WebhookTimeout, 10*time.Second)
	def(&c.WebhookBackoff, time.Second)
	if c.WebhookMaxAttempts <= 0 {
		c.WebhookMaxAttempts = 20
	}
	if c.MaxUploadBytes <= 0 {
		c.MaxUploadBytes = 512 << 20
	}
	if c.MaxCPUCount <= 0 {
		c.MaxCPUCount = max(goruntime.NumCPU(), 8)
	}
	if c.MaxMemoryMB <= 0 {
		var si syscall.Sysinfo_t
		if err := syscall.Sysinfo(&si); err == nil {
			c.MaxMemoryMB = int(uint64(si.Totalram) * uint64(si.Unit) >> 20)
		} else {
			c.MaxMemoryMB = 1 << 20 // 1 TiB: unknown, so only absurd sizes are refused
		}
	}
	if c.TemplateFilesDir == "" {
		c.TemplateFilesDir = filepath.Join(os.TempDir(), "cocoon-template-files")
	}
	if c.DefaultTimeout > c.MaxTimeout {
		c.DefaultTimeout = c.MaxTimeout
	}
	if c.RateLimit == 0 {
		c.RateLimit = 20
	}
	if c.RateBurst <= 0 {
		c.RateBurst = 2 * int(max(c.RateLimit, 1))
	}
	if c.BodyLimit <= 0 {
		c.BodyLimit = 1 << 20
	}
	if c.BaseTemplate == "" {
		c.BaseTemplate = "base"
	}
}

// Server is the REST api. Create it with New, serve Handler, and run Run
// for the background loops.
type Server struct {
	cfg    Config
	store  store.Store
	nodes  NodeSet
	logger *slog.Logger
	doc    *openapi3.T
	limit  *rateLimiter
	locks  *keyedMutex
	now    func() time.Time

	mux    *http.ServeMux
	routes []route

	started    time.Time // rows in transition before it are settled at once
	reconciled sync.Once // the reconcile at start
	deathMu    sync.Mutex
	onDeath    []func(id, reason string)
	watching   map[string]bool // nodes whose Watch stream is followed (deathMu)

	clock       eventClock    // lifecycle event times
	deliver     chan struct{} // wakes the webhook deliverer
	webhookHTTP *http.Client
}

// New builds the api over st and nodes.
func New(cfg Config, st store.Store, nodes NodeSet, logger *slog.Logger) (*Server, error) {
	if st == nil || nodes == nil {
		return nil, errors.New("api: store and nodes are required")
	}
	if logger == nil {
		logger = slog.Default()
	}
	cfg.setDefaults()
	doc, err := loadSpec(context.Background())
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:    cfg,
		store:  st,
		nodes:  nodes,
		logger: logger.With("component", "api"),
		doc:    doc,
		locks:  newKeyedMutex(),
		now:    time.Now,
		mux:    http.NewServeMux(),

		started: time.Now(),

		deliver:     make(chan struct{}, 1),
		webhookHTTP: &http.Client{},
	}
	if cfg.RateLimit > 0 {
		s.limit = newRateLimiter(cfg.RateLimit, cfg.RateBurst, time.Now)
	}
	if err := s.registerRoutes(); err != nil {
		return nil, err
	}
	return s, nil
}

// Handler returns the HTTP handler of the api.
func (s *Server) Handler() http.Handler {
	return s.recoverer(s.notFound(s.mux))
}

// ReconcileAtStart compares the store with the nodes once (unless it ran
// already): sandboxes whose runtime is gone become dead, and operations an
// earlier api process left half-way are settled from the nodes' view. Call
// it before serving, so that the first answers are true; a node that does
// not answer within 10 s is left to the periodic reconcile.
func (s *Server) ReconcileAtStart(ctx context.Context) {
	s.reconciled.Do(func() {
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := s.reconcile(ctx); err != nil {
			s.logger.WarnContext(ctx, "reconcile at start", "err", err)
		}
		s.logger.InfoContext(ctx, "reconcile at start done", "took", time.Since(t0).Round(time.Millisecond))
	})
}

// Run drives the background loops until ctx ends: it reconciles with the
// nodes once at start (see ReconcileAtStart), follows the nodes' death
// reports, then enforces expirations, samples metrics and reconciles
// periodically.
func (s *Server) Run(ctx context.Context) error {
	s.watchNodes(ctx)
	s.ReconcileAtStart(ctx)
	var wg sync.WaitGroup
	loop := func(every time.Duration, name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					if err := f(ctx); err != nil && ctx.Err() == nil {
						s.logger.WarnContext(ctx, name, "err", err)
					}
				}
			}
		}()
	}
	loop(s.cfg.LifecycleInterval, "expire", s.expire)
	loop(s.cfg.MetricsInterval, "sample metrics", s.sampleMetrics)
	loop(s.cfg.ReconcileInterval, "reconcile", s.reconcile)
	wg.Go(func() { s.deliverLoop(ctx) })
	wg.Wait()
	return nil
}

// authKind says how a route authenticates.
type authKind int

const (
	authNone authKind = iota
	authKey
	authAdmin
	// authUpload: no API key (the URL is signed); the handler reads and
	// checks the body itself, beyond the JSON body limit.
	authUpload
)

func (s *Server) registerRoutes() error {
	type r struct {
		method, path string
		auth         authKind
		h            func(http.ResponseWriter, *http.Request) error
	}
	table := []r{
		{"GET", "/health", authNone, s.health},
		{"GET", "/openapi.yaml", authNone, s.openapi},

		{"POST", "/sandboxes", authKey, s.createSandbox},
		{"POST", "/v2/sandboxes", authKey, s.createSandbox},
		{"GET", "/sandboxes", authKey, s.listSandboxesV1},
		{"GET", "/v2/sandboxes", authKey, s.listSandboxes},
		{"GET", "/sandboxes/metrics", authKey, s.sandboxesMetrics},
		{"GET", "/sandboxes/{sandboxID}", authKey, s.getSandbox},
		{"DELETE", "/sandboxes/{sandboxID}", authKey, s.killSandbox},
		{"POST", "/sandboxes/{sandboxID}/timeout", authKey, s.setTimeout},
		{"POST", "/sandboxes/{sandboxID}/refreshes", authKey, s.refresh},
		{"POST", "/sandboxes/{sandboxID}/pause", authKey, s.pauseSandbox},
		{"POST", "/sandboxes/{sandboxID}/resume", authKey, s.resumeSandbox},
		{"POST", "/sandboxes/{sandboxID}/connect", authKey, s.connectSandbox},
		{"POST", "/v2/sandboxes/{sandboxID}/connect", authKey, s.connectSandbox},
		{"GET", "/sandboxes/{sandboxID}/metrics", authKey, s.sandboxMetrics},
		{"GET", "/sandboxes/{sandboxID}/logs", authKey, s.sandboxLogs},
		{"GET", "/v2/sandboxes/{sandboxID}/logs", authKey, s.sandboxLogsV2},

		{"GET", "/events/sandboxes", authKey, s.listEvents},
		{"GET", "/events/sandboxes/{sandboxID}", authKey, s.listEvents},
		{"GET", "/events/webhooks", authKey, s.listWebhooks},
		{"POST", "/events/webhooks", authKey, s.createWebhook},
		{"GET", "/events/webhooks/{webhookID}", authKey, s.getWebhook},
		{"PATCH", "/events/webhooks/{webhookID}", authKey, s.updateWebhook},
		{"DELETE", "/events/webhooks/{webhookID}", authKey, s.deleteWebhook},

		{"GET", "/templates", authKey, s.listTemplates},
		{"GET", "/templates/{templateID}", authKey, s.getTemplate},
		{"DELETE", "/templates/{templateID}", authKey, s.deleteTemplate},
		{"POST", "/v3/templates", authKey, s.createTemplateV3},
		{"GET", "/templates/{templateID}/files/{hash}", authKey, s.templateFileLink},
		{"PUT", "/templates/{templateID}/files/{hash}/upload", authUpload, s.uploadTemplateFile},
		{"POST", "/v2/templates/{templateID}/builds/{buildID}", authKey, s.startBuild},
		{"GET", "/templates/{templateID}/builds/{buildID}/status", authKey, s.buildStatus},

		{"POST", "/admin/teams", authAdmin, s.adminCreateTeam},
		{"GET", "/admin/teams", authAdmin, s.adminListTeams},
		{"POST", "/admin/teams/{teamID}/keys", authAdmin, s.adminCreateKey},
		{"GET", "/admin/teams/{teamID}/keys", authAdmin, s.adminListKeys},
		{"DELETE", "/admin/keys/{keyID}", authAdmin, s.adminDeleteKey},
	}
	for _, rt := range table {
		v, err := newValidator(s.doc, rt.method, rt.path)
		if err != nil {
			return err
		}
		s.mux.Handle(rt.method+" "+rt.path, s.wrap(rt.auth, v, rt.h))
		s.routes = append(s.routes, route{method: rt.method, path: rt.path})
	}
	return nil
}

// wrap applies, in order: authentication, the per-key rate limit, the body
// limit, OpenAPI validation; then runs h and writes its error, if any.
func (s *Server) wrap(kind authKind, v *validator, h func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if m := s.cfg.Metrics; m != nil {
			start := time.Now()
			sw := &statusWriter{ResponseWriter: w}
			w = sw
			defer func() { m.Request(r.Pattern, sw.status, time.Since(start)) }()
		}
		var err error
		switch kind {
		case authKey:
			r, err = s.authenticate(r)
		case authAdmin:
			err = s.authenticateAdmin(r)
		}
		if err != nil {
			writeErr(w, r, s.logger, err)
			return
		}
		if kind == authUpload {
			if err := h(w, r); err != nil {
				writeErr(w, r, s.logger, err)
			}
			return
		}
		if kind != authNone {
			if ok, wait := s.limit.allow(rateKey(r)); !ok {
				secs := int(wait/time.Second) + 1
				w.Header().Set("Retry-After", strconv.Itoa(secs))
				writeError(w, http.StatusTooManyRequests, fmt.Sprintf("rate limit exceeded, retry in %d s", secs))
				return
			}
		}
		if err := readBody(r, s.cfg.BodyLimit); err != nil {
			writeErr(w, r, s.logger, err)
			return
		}
		if err := v.validate(r); err != nil {
			writeErr(w, r, s.logger, err)
			return
		}
		if err := h(w, r); err != nil {
			writeErr(w, r, s.logger, err)
		}
	})
}

// notFound answers unknown paths and methods with the E2B error body instead
// of ServeMux's plain text.
func (s *Server) notFound(next *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := next.Handler(r); pattern == "" {
			// Handler reports 405 vs 404 through the handler it returns; probe it.
			rec := &statusRecorder{header: http.Header{}}
			h, _ := next.Handler(r)
			h.ServeHTTP(rec, r)
			for k, v := range rec.header {
				if k == "Allow" {
					w.Header()[k] = v
				}
			}
			status := rec.status
			if status == 0 {
				status = http.StatusNotFound
			}
			writeError(w, status, http.StatusText(status))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// statusWriter keeps the status of a response for the request metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

type statusRecorder struct {
	header http.Header
	status int
}

func (r *statusRecorder) Header() http.Header         { return r.header }
func (r *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *statusRecorder) WriteHeader(status int)      { r.status = status }

// recoverer turns a handler panic into a 500 and a log line.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.logger.ErrorContext(r.Context(), "panic", "method", r.Method, "path", r.URL.Path, "panic", v)
				writeError(w, http.StatusInternalServerError, "internal server error")
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func (s *Server) health(w http.ResponseWriter, _ *http.Request) error {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	return nil
}

func (s *Server) openapi(w http.ResponseWriter, _ *http.Request) error {
	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(apispec.OpenAPI)
	return nil
}

// keyedMutex serialises operations on one sandbox within this process; the
// store's version check covers other processes.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*refMutex
}

type refMutex struct {
	sync.Mutex
	refs int
}

func newKeyedMutex() *keyedMutex { return &keyedMutex{locks: map[string]*refMutex{}} }

// held tells whether key is locked (or waited for) in this process.
func (k *keyedMutex) held(key string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.locks[key] != nil
}

// lock locks key and returns its unlock function.
func (k *keyedMutex) lock(key string) func() {
	k.mu.Lock()
	m, ok := k.locks[key]
	if !ok {
		m = &refMutex{}
		k.locks[key] = m
	}
	m.refs++
	k.mu.Unlock()
	m.Lock()
	return func() {
		m.Unlock()
		k.mu.Lock()
		m.refs--
		if m.refs == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}
