// Package envd assembles envd, the daemon inside every sandbox: the
// process and filesystem Connect services, /files, /init, /envs, /metrics
// and /health on one listener (HTTP/1.1 and h2c), behind the access token
// set at start or by /init.
package envd

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"connectrpc.com/connect"

	"github.com/cocoon-run/cocoon/internal/envd/files"
	"github.com/cocoon-run/cocoon/internal/envd/filesystem"
	"github.com/cocoon-run/cocoon/internal/envd/metrics"
	"github.com/cocoon-run/cocoon/internal/envd/process"
	"github.com/cocoon-run/cocoon/internal/envd/reaper"
	"github.com/cocoon-run/cocoon/internal/envd/session"
)

// Version is the envd version reported to SDKs (as envdVersion at create).
// SDKs switch features off below 0.6.4.
const Version = "0.6.4"

// DefaultPort is envd's port inside a sandbox.
const DefaultPort = 49983

// AccessTokenHeader carries the access token on every request.
const AccessTokenHeader = "X-Access-Token"

// maxMessageBytes bounds one Connect request message.
const maxMessageBytes = 16 << 20

var errNotRoot = errors.New("envd is not root")

// Config configures a Server. The zero value is usable.
type Config struct {
	// Session is shared with the services; nil creates one.
	Session *session.Session
	// AccessToken, when set, is required from every request until /init
	// replaces it.
	AccessToken string
	// DefaultUser is the account requests act as unless they name one
	// ("" = "user" when it exists, else envd's own account).
	DefaultUser string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// System applies /init's clock, hostname and entropy; nil uses the real
	// machine when envd runs as root and skips clock and hostname otherwise.
	System System
	// Keepalive is the interval of keepalive events on idle streams (0 = 30s).
	Keepalive time.Duration
	// ShutdownTimeout bounds the graceful part of shutdown (0 = 10s).
	ShutdownTimeout time.Duration
	// Reaper, when envd is PID 1, reaps orphans; the processes envd starts
	// are kept from it (nil: envd reaps nothing but its own).
	Reaper *reaper.Reaper
}

// Server is one envd.
type Server struct {
	cfg     Config
	sess    *session.Session
	log     *slog.Logger
	sys     System
	fs      *filesystem.Service
	proc    *process.Service
	metrics *metrics.Sampler
	handler http.Handler
}

// New assembles an envd.
func New(cfg Config) (*Server, error) {
	if cfg.Session == nil {
		cfg.Session = &session.Session{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Keepalive <= 0 {
		cfg.Keepalive = filesystem.DefaultKeepalive
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	if cfg.System == nil {
		if os.Geteuid() == 0 {
			cfg.System = hostSystem{}
		} else {
			cfg.System = noSystem{}
		}
	}
	if cfg.AccessToken != "" {
		cfg.Session.SetToken(cfg.AccessToken)
	}
	if cfg.DefaultUser != "" {
		cfg.Session.SetDefaultUser(cfg.DefaultUser)
	}
	s := &Server{
		cfg:     cfg,
		sess:    cfg.Session,
		log:     cfg.Logger,
		sys:     cfg.System,
		fs:      filesystem.New(cfg.Session, filesystem.WithKeepalive(cfg.Keepalive), filesystem.WithLogger(cfg.Logger.With("logger", "filesystemSvc"))),
		proc:    process.New(cfg.Session, process.WithKeepalive(cfg.Keepalive), process.WithReaper(cfg.Reaper)),
		metrics: metrics.New("", "/"),
	}

	opts := []connect.HandlerOption{
		connect.WithInterceptors(tokenInterceptor{sess: s.sess}),
		connect.WithReadMaxBytes(maxMessageBytes),
	}
	mux := http.NewServeMux()
	mux.Handle(s.fs.Handler(opts...))
	mux.Handle(s.proc.Handler(opts...))
	mux.HandleFunc("GET /health", s.health)
	mux.Handle("/files", s.filesAuth(files.New(s.sess, s.log.With("logger", "filesSvc"))))
	mux.HandleFunc("POST /init", s.init)
	mux.Handle("GET /envs", s.requireToken(http.HandlerFunc(s.envs)))
	mux.Handle("GET /metrics", s.requireToken(http.HandlerFunc(s.serveMetrics)))
	mux.Handle("/", s.requireToken(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		files.WriteError(w, http.StatusNotFound, "not found")
	})))
	s.handler = s.logRequests(mux)
	return s, nil
}

// Handler is envd's whole HTTP surface, for embedding and tests.
func (s *Server) Handler() http.Handler { return s.handler }

// Session is the session the services share.
func (s *Server) Session() *session.Session { return s.sess }

// Serve serves ln until ctx ends, then shuts down: watch streams end,
// processes are killed, in-flight requests get ShutdownTimeout to finish.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           s.handler,
		Protocols:         &protocols,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.log.Info("envd serving", "addr", ln.Addr().String(), "version", Version)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	var serveErr error
	select {
	case serveErr = <-errc:
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	// Long-lived streams (watches, process output) would hold a graceful
	// shutdown to its deadline: end them first.
	if err := s.Close(sctx); err != nil {
		s.log.Warn("close services", "err", err)
	}
	if serveErr != nil {
		return fmt.Errorf("serve: %w", serveErr)
	}
	if err := srv.Shutdown(sctx); err != nil {
		s.log.Warn("graceful shutdown incomplete", "err", err)
		srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// Close ends watches and kills processes, waiting for them until ctx ends.
// Serve calls it; call it yourself when using Handler only.
func (s *Server) Close(ctx context.Context) error {
	s.fs.Close()
	if err := s.proc.Close(ctx); err != nil {
		return fmt.Errorf("close process service: %w", err)
	}
	return nil
}

// tokenOK reports whether r carries the session's token (or none is set).
func tokenOK(token, got string) bool {
	if token == "" {
		return true
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

func (s *Server) requireToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !tokenOK(s.sess.Token(), r.Header.Get(AccessTokenHeader)) {
			files.WriteError(w, http.StatusUnauthorized, "missing or invalid access token")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// filesAuth accepts a token or a signed URL.
func (s *Server) filesAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := files.Authorized(r, s.sess.Token(), time.Now()); err != nil {
			files.WriteError(w, http.StatusUnauthorized, err.Error())
			return
		}
		next.ServeHTTP(w, r)
	})
}

// tokenInterceptor refuses RPCs without the session's token.
type tokenInterceptor struct{ sess *session.Session }

func (t tokenInterceptor) check(h http.Header) error {
	if !tokenOK(t.sess.Token(), h.Get(AccessTokenHeader)) {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("missing or invalid access token"))
	}
	return nil
}

func (t tokenInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if err := t.check(req.Header()); err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

func (t tokenInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (t tokenInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if err := t.check(conn.RequestHeader()); err != nil {
			return err
		}
		return next(ctx, conn)
	}
}

// statusWriter records the status for the request log.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// ReadFrom keeps sendfile(2) for downloads.
func (w *statusWriter) ReadFrom(r io.Reader) (int64, error) { return io.Copy(w.ResponseWriter, r) }

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.log.Enabled(r.Context(), slog.LevelDebug) {
			next.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "status", sw.status, "dur", time.Since(start))
	})
}
