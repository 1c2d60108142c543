// Package process implements envd's process.Process Connect service: it
// starts commands (optionally in a PTY) as the caller's Unix account, streams
// their output, and lets clients attach, send input and signals. A process
// outlives the stream that started it; it is dropped from the table once it
// has ended.
package process

import (
	"net/http"
	"time"

	"connectrpc.com/connect"

	"github.com/cocoon-run/cocoon/api/gen/process/processconnect"
	"github.com/cocoon-run/cocoon/internal/envd/session"
)

// DefaultKeepalive is how often an idle output stream carries a keepalive event.
const DefaultKeepalive = 30 * time.Second

// Option configures a Service.
type Option func(*Service)

// WithKeepalive sets the keepalive interval of output streams.
func WithKeepalive(d time.Duration) Option {
	return func(s *Service) { s.keepalive = d }
}

// Service implements processconnect.ProcessHandler.
type Service struct {
	processconnect.UnimplementedProcessHandler
	sess      *session.Session
	keepalive time.Duration
}

// New returns a process service whose requests use sess for envs and the default user.
func New(sess *session.Session, opts ...Option) *Service {
	s := &Service{sess: sess, keepalive: DefaultKeepalive}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Handler returns the Connect handler of process.Process, mounted at the returned path.
func (s *Service) Handler(opts ...connect.HandlerOption) (string, http.Handler) {
	return processconnect.NewProcessHandler(s, opts...)
}

// Close kills every process still running and waits for them to be reaped.
func (s *Service) Close() error { return nil }

// NewHandler returns the Connect handler of process.Process, mounted at the
// returned path. Use New and Service.Close to kill children at shutdown.
func NewHandler(sess *session.Session, opts ...connect.HandlerOption) (string, http.Handler) {
	return New(sess).Handler(opts...)
}
