// Package codeinterp is the code interpreter served on port 49999 inside a
// code-interpreter sandbox: the HTTP wire of E2B's code interpreter
// (POST /execute streaming NDJSON, /contexts CRUD, restart, interrupt) in
// front of stateful kernels: ipykernel for Python, spoken to over the
// Jupyter messaging protocol on a small ZMTP client of our own (no cgo, no
// jupyter-server process), and a kernel of our own on Node's vm module for
// JavaScript.
package codeinterp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Port is the code interpreter's port in the sandbox (the SDK's JUPYTER_PORT).
const Port = 49999

// Emit writes one NDJSON line of an execution.
type Emit func(line map[string]any) error

// Kernel is a stateful interpreter of one context.
type Kernel interface {
	// Execute runs code; env is set for this execution only.
	Execute(ctx context.Context, code string, env map[string]string, emit Emit) error
	Interrupt() error
	Restart(ctx context.Context) error
	Close() error
	// Generation counts the kernel's starts: a restart loses its state.
	Generation() int
}

// Language starts kernels of one language.
type Language struct {
	// Start starts a kernel in dir with the process environment env.
	Start func(ctx context.Context, dir string, env []string) (Kernel, error)
	// SetEnv returns code that sets env permanently in a kernel.
	SetEnv func(env map[string]string) string
}

// Config configures a Server.
type Config struct {
	Languages map[string]Language
	// Aliases map other names of a language to its key in Languages.
	Aliases map[string]string
	// DefaultLanguage is the language of the default context.
	DefaultLanguage string
	// Cwd is the working directory of contexts created without one.
	Cwd string
	// EnvdURL, when set, is asked for the sandbox's env vars (GET /envs
	// with the request's X-Access-Token): a request envd refuses is
	// refused, and the env vars reach the kernels.
	EnvdURL string
	Log     *slog.Logger
	// KeepAlive is the interval of keepalive lines (default 5 s).
	KeepAlive time.Duration
}

// Context is a kernel and what the SDK knows of it.
type Context struct {
	ID       string `json:"id"`
	Language string `json:"language"`
	Cwd      string `json:"cwd"`

	kernel  Kernel
	mu      sync.Mutex        // serializes env updates with executions
	applied map[string]string // the sandbox env vars set in the kernel
	gen     int               // of the kernel applied was set in
}

// Server serves the code interpreter's HTTP API.
type Server struct {
	cfg  Config
	http *http.Client

	mu       sync.Mutex
	contexts map[string]*Context
	defaults map[string]*Context // language → its default context
	starting map[string]chan struct{}
}

// New returns a server; call Warm to start the default context before the
// sandbox is snapshotted.
func New(cfg Config) *Server {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 5 * time.Second
	}
	if cfg.Cwd == "" {
		cfg.Cwd = "/home/user"
	}
	return &Server{
		cfg: cfg, http: &http.Client{Timeout: 5 * time.Second},
		contexts: map[string]*Context{}, defaults: map[string]*Context{}, starting: map[string]chan struct{}{},
	}
}

// Warm starts the default context of the default language.
func (s *Server) Warm(ctx context.Context) error {
	_, err := s.defaultContext(ctx, s.cfg.DefaultLanguage)
	return err
}

// Close stops every kernel.
func (s *Server) Close() {
	s.mu.Lock()
	cs := make([]*Context, 0, len(s.contexts))
	for _, c := range s.contexts {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	for _, c := range cs {
		_ = c.kernel.Close()
	}
}

// Handler returns the HTTP API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, 200, "ok") })
	mux.HandleFunc("POST /execute", s.execute)
	mux.HandleFunc("POST /contexts", s.createContext)
	mux.HandleFunc("GET /contexts", s.listContexts)
	mux.HandleFunc("DELETE /contexts/{id}", s.deleteContext)
	mux.HandleFunc("POST /contexts/{id}/restart", s.restartContext)
	mux.HandleFunc("POST /contexts/{id}/interrupt", s.interruptContext)
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]any{"error": msg, "code": code})
}

// language resolves a language name; "" is the default.
func (s *Server) language(name string) (string, error) {
	name = strings.ToLower(strings.TrimSpace(name))
	if name == "" {
		return s.cfg.DefaultLanguage, nil
	}
	if a, ok := s.cfg.Aliases[name]; ok {
		name = a
	}
	if _, ok := s.cfg.Languages[name]; ok {
		return name, nil
	}
	return "", fmt.Errorf("unknown language %q: available languages are %s", name, strings.Join(s.languages(), ", "))
}

func (s *Server) languages() []string {
	var l []string
	for k := range s.cfg.Languages {
		l = append(l, k)
	}
	sort.Strings(l)
	return l
}

// newContext starts a kernel.
func (s *Server) newContext(ctx context.Context, lang, cwd string) (*Context, error) {
	if cwd == "" {
		cwd = s.cfg.Cwd
	}
	if fi, err := os.Stat(cwd); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("cwd %q is not a directory", cwd)
	}
	k, err := s.cfg.Languages[lang].Start(ctx, cwd, os.Environ())
	if err != nil {
		return nil, fmt.Errorf("start %s kernel: %w", lang, err)
	}
	c := &Context{ID: randUUID(), Language: lang, Cwd: cwd, kernel: k}
	s.mu.Lock()
	s.contexts[c.ID] = c
	s.mu.Unlock()
	return c, nil
}

// defaultContext returns (starting it once) the default context of lang.
func (s *Server) defaultContext(ctx context.Context, lang string) (*Context, error) {
	for {
		s.mu.Lock()
		if c, ok := s.defaults[lang]; ok {
			s.mu.Unlock()
			return c, nil
		}
		if ch, ok := s.starting[lang]; ok {
			s.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		ch := make(chan struct{})
		s.starting[lang] = ch
		s.mu.Unlock()
		c, err := s.newContext(ctx, lang, "")
		s.mu.Lock()
		delete(s.starting, lang)
		if err == nil {
			s.defaults[lang] = c
		}
		s.mu.Unlock()
		close(ch)
		return c, err
	}
}

func (s *Server) lookup(id string) (*Context, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.contexts[id]
	return c, ok
}

type executeRequest struct {
	Code      string            `json:"code"`
	ContextID string            `json:"context_id"`
	Language  string            `json:"language"`
	EnvVars   map[string]string `json:"env_vars"`
}

func (s *Server) execute(w http.ResponseWriter, r *http.Request) {
	var req executeRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<20)).Decode(&req); err != nil {
		writeError(w, 400, "bad request body: "+err.Error())
		return
	}
	if req.ContextID != "" && req.Language != "" {
		writeError(w, 400, "give context_id or language, not both")
		return
	}
	envs, code, err := s.sandboxEnv(r)
	if err != nil {
		writeError(w, code, err.Error())
		return
	}
	var c *Context
	if req.ContextID != "" {
		var ok bool
		if c, ok = s.lookup(req.ContextID); !ok {
			writeError(w, 404, fmt.Sprintf("context %q not found", req.ContextID))
			return
		}
	} else {
		lang, err := s.language(req.Language)
		if err != nil {
			writeError(w, 400, err.Error())
			return
		}
		if c, err = s.defaultContext(r.Context(), lang); err != nil {
			writeError(w, 500, err.Error())
			return
		}
	}

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(200)
	rc := http.NewResponseController(w)
	var wmu sync.Mutex
	emit := func(line map[string]any) error {
		b, err := json.Marshal(line)
		if err != nil {
			return err
		}
		wmu.Lock()
		defer wmu.Unlock()
		if _, err := w.Write(append(b, '\n')); err != nil {
			return err
		}
		return rc.Flush()
	}
	_ = rc.Flush()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(s.cfg.KeepAlive)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				_ = emit(map[string]any{"type": "keepalive"})
			}
		}
	}()

	c.mu.Lock()
	defer c.mu.Unlock()
	if err := s.applyEnv(r.Context(), c, envs); err != nil {
		s.cfg.Log.Warn("set sandbox env vars", "context", c.ID, "err", err)
	}
	err = c.kernel.Execute(r.Context(), req.Code, req.EnvVars, emit)
	switch {
	case err == nil:
		_ = emit(map[string]any{"type": "end_of_execution"})
	case r.Context().Err() != nil:
		s.cfg.Log.Info("execution interrupted: the client went away", "context", c.ID)
	default:
		s.cfg.Log.Error("execute", "context", c.ID, "err", err)
		_ = emit(map[string]any{"type": "error", "name": "ExecutionError", "value": err.Error(), "traceback": ""})
		_ = emit(map[string]any{"type": "unexpected_end_of_execution"})
	}
}

// sandboxEnv asks envd for the sandbox's env vars with the request's
// access token; envd refusing the token refuses the request.
func (s *Server) sandboxEnv(r *http.Request) (map[string]string, int, error) {
	if s.cfg.EnvdURL == "" {
		return nil, 0, nil
	}
	req, err := http.NewRequestWithContext(r.Context(), "GET", s.cfg.EnvdURL+"/envs", nil)
	if err != nil {
		return nil, 500, err
	}
	if t := r.Header.Get("X-Access-Token"); t != "" {
		req.Header.Set("X-Access-Token", t)
	}
	resp, err := s.http.Do(req)
	if err != nil {
		// envd unreachable (a test without one): run without its env vars.
		s.cfg.Log.Warn("envd env vars", "err", err)
		return nil, 0, nil
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized {
		return nil, 401, errors.New("missing or invalid access token")
	}
	if resp.StatusCode != 200 {
		return nil, 0, nil
	}
	var envs map[string]string
	if err := json.NewDecoder(resp.Body).Decode(&envs); err != nil {
		return nil, 0, nil
	}
	return envs, 0, nil
}

// applyEnv sets in c's kernel the sandbox env vars it does not have yet.
func (s *Server) applyEnv(ctx context.Context, c *Context, envs map[string]string) error {
	if g := c.kernel.Generation(); g != c.gen {
		c.applied, c.gen = nil, g
	}
	diff := map[string]string{}
	for k, v := range envs {
		if cur, ok := c.applied[k]; !ok || cur != v {
			diff[k] = v
		}
	}
	if len(diff) == 0 {
		return nil
	}
	set := s.cfg.Languages[c.Language].SetEnv
	if set == nil {
		return nil
	}
	if err := executeSilently(ctx, c.kernel, set(diff)); err != nil {
		return err
	}
	if c.applied == nil {
		c.applied = map[string]string{}
	}
	for k, v := range diff {
		c.applied[k] = v
	}
	return nil
}

// executeSilently runs code and reports an error output as an error.
func executeSilently(ctx context.Context, k Kernel, code string) error {
	if jk, ok := k.(*jupyterKernel); ok {
		jk.mu.Lock()
		defer jk.mu.Unlock()
		return jk.silent(ctx, code)
	}
	var failed error
	err := k.Execute(ctx, code, nil, func(line map[string]any) error {
		if line["type"] == "error" {
			failed = fmt.Errorf("%v: %v", line["name"], line["value"])
		}
		return nil
	})
	if err != nil {
		return err
	}
	return failed
}

type createContextRequest struct {
	Language string `json:"language"`
	Cwd      string `json:"cwd"`
}

func (s *Server) createContext(w http.ResponseWriter, r *http.Request) {
	var req createContextRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, 400, "bad request body: "+err.Error())
		return
	}
	lang, err := s.language(req.Language)
	if err != nil {
		writeError(w, 400, err.Error())
		return
	}
	c, err := s.newContext(r.Context(), lang, req.Cwd)
	if err != nil {
		code := 500
		if strings.Contains(err.Error(), "not a directory") {
			code = 400
		}
		writeError(w, code, err.Error())
		return
	}
	writeJSON(w, 200, c)
}

func (s *Server) listContexts(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	cs := make([]*Context, 0, len(s.contexts))
	for _, c := range s.contexts {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	slices.SortFunc(cs, func(a, b *Context) int { return strings.Compare(a.ID, b.ID) })
	writeJSON(w, 200, cs)
}

func (s *Server) deleteContext(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.mu.Lock()
	c, ok := s.contexts[id]
	if ok {
		delete(s.contexts, id)
		for lang, d := range s.defaults {
			if d == c {
				delete(s.defaults, lang)
			}
		}
	}
	s.mu.Unlock()
	if !ok {
		writeError(w, 404, fmt.Sprintf("context %q not found", id))
		return
	}
	_ = c.kernel.Close()
	w.WriteHeader(204)
}

func (s *Server) restartContext(w http.ResponseWriter, r *http.Request) {
	c, ok := s.lookup(r.PathValue("id"))
	if !ok {
		writeError(w, 404, fmt.Sprintf("context %q not found", r.PathValue("id")))
		return
	}
	// Interrupt a running execution first so the restart does not wait for it.
	_ = c.kernel.Interrupt()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.kernel.Restart(r.Context()); err != nil {
		writeError(w, 500, err.Error())
		return
	}
	c.applied = nil
	w.WriteHeader(204)
}

func (s *Server) interruptContext(w http.ResponseWriter, r *http.Request) {
	c, ok := s.lookup(r.PathValue("id"))
	if !ok {
		writeError(w, 404, fmt.Sprintf("context %q not found", r.PathValue("id")))
		return
	}
	if err := c.kernel.Interrupt(); err != nil {
		writeError(w, 500, err.Error())
		return
	}
	w.WriteHeader(204)
}

// randUUID is a random (version 4) UUID.
func randUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
