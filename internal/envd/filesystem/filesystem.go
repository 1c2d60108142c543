// Package filesystem implements envd's filesystem.Filesystem Connect
// service: stat, list, create, move and remove entries, and watch
// directories, as the caller's Unix account (relative paths resolve against
// its home; directories it creates are owned by it).
package filesystem

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"

	fspb "github.com/cocoon-run/cocoon/api/gen/filesystem"
	"github.com/cocoon-run/cocoon/api/gen/filesystem/filesystemconnect"
	"github.com/cocoon-run/cocoon/internal/envd/frames"
	"github.com/cocoon-run/cocoon/internal/envd/identity"
	"github.com/cocoon-run/cocoon/internal/envd/session"
)

// DefaultKeepalive is how often an idle WatchDir stream carries a keepalive.
const DefaultKeepalive = 30 * time.Second

// Option configures a Service.
type Option func(*Service)

// WithKeepalive sets the keepalive interval of WatchDir streams.
func WithKeepalive(d time.Duration) Option {
	return func(s *Service) { s.keepalive = d }
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(s *Service) { s.log = l }
}

// Service implements filesystemconnect.FilesystemHandler.
type Service struct {
	sess      *session.Session
	keepalive time.Duration
	log       *slog.Logger

	// ctx ends every watch stream and polling watcher at Close.
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	watchers map[string]*pollWatcher
}

var _ filesystemconnect.FilesystemHandler = (*Service)(nil)

// New returns a filesystem service whose requests use sess for the default user.
func New(sess *session.Session, opts ...Option) *Service {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{
		sess:      sess,
		keepalive: DefaultKeepalive,
		log:       slog.Default(),
		ctx:       ctx,
		cancel:    cancel,
		watchers:  map[string]*pollWatcher{},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Handler returns the Connect handler of filesystem.Filesystem, mounted at the returned path.
func (s *Service) Handler(opts ...connect.HandlerOption) (string, http.Handler) {
	// Events are tens of bytes: gzip would cost more than it saves.
	opts = append([]connect.HandlerOption{connect.WithInterceptors(frames.Interceptor{}), connect.WithCompressMinBytes(frames.CompressMinBytes)}, opts...)
	return filesystemconnect.NewFilesystemHandler(s, opts...)
}

// Close ends every watch stream and removes every polling watcher.
func (s *Service) Close() error {
	s.cancel()
	s.mu.Lock()
	ws := s.watchers
	s.watchers = map[string]*pollWatcher{}
	s.mu.Unlock()
	for _, w := range ws {
		w.stop()
	}
	return nil
}

// user resolves the account a request acts as.
func (s *Service) user(h http.Header) (*identity.User, error) {
	u, err := identity.Resolve(h, "", s.sess.DefaultUser())
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("resolve user: %w", err))
	}
	return u, nil
}

// Code maps a filesystem error to the Connect code the SDK expects.
func Code(err error) connect.Code {
	var ce *connect.Error
	switch {
	case errors.As(err, &ce):
		return ce.Code()
	case errors.Is(err, fs.ErrNotExist):
		return connect.CodeNotFound
	case errors.Is(err, fs.ErrExist), errors.Is(err, syscall.ENOTEMPTY):
		return connect.CodeAlreadyExists
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EROFS):
		return connect.CodePermissionDenied
	case errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EISDIR),
		errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.ENAMETOOLONG),
		errors.Is(err, syscall.ELOOP), errors.Is(err, syscall.EXDEV):
		return connect.CodeInvalidArgument
	case errors.Is(err, syscall.EBUSY): // a mount point
		return connect.CodeFailedPrecondition
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return connect.CodeResourceExhausted
	default:
		return connect.CodeInternal
	}
}

func toConnect(err error) error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	return connect.NewError(Code(err), err)
}

// Stat describes one entry.
func (s *Service) Stat(_ context.Context, req *connect.Request[fspb.StatRequest]) (*connect.Response[fspb.StatResponse], error) {
	u, err := s.user(req.Header())
	if err != nil {
		return nil, err
	}
	e, err := Entry(u.Abs(req.Msg.GetPath()))
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&fspb.StatResponse{Entry: e}), nil
}

// MakeDir creates a directory and its missing parents.
func (s *Service) MakeDir(_ context.Context, req *connect.Request[fspb.MakeDirRequest]) (*connect.Response[fspb.MakeDirResponse], error) {
	u, err := s.user(req.Header())
	if err != nil {
		return nil, err
	}
	p := u.Abs(req.Msg.GetPath())
	if fi, err := os.Lstat(p); err == nil {
		if fi.IsDir() {
			return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("directory %s already exists", p))
		}
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("%s exists and is not a directory", p))
	}
	if err := MkdirAll(p, int(u.UID), int(u.GID)); err != nil {
		return nil, toConnect(fmt.Errorf("make dir: %w", err))
	}
	e, err := Entry(p)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&fspb.MakeDirResponse{Entry: e}), nil
}

// Move renames an entry, creating the destination's missing parents.
func (s *Service) Move(_ context.Context, req *connect.Request[fspb.MoveRequest]) (*connect.Response[fspb.MoveResponse], error) {
	u, err := s.user(req.Header())
	if err != nil {
		return nil, err
	}
	if req.Msg.GetSource() == "" || req.Msg.GetDestination() == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("source and destination are required"))
	}
	src, dst := u.Abs(req.Msg.GetSource()), u.Abs(req.Msg.GetDestination())
	if src == "/" || dst == "/" {
		// rename(2) says EBUSY, which was a 500.
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("the root directory cannot be moved or replaced"))
	}
	if strings.HasPrefix(dst, src+"/") {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("cannot move %s into itself (%s)", src, dst))
	}
	if _, err := os.Lstat(src); err != nil {
		return nil, toConnect(err)
	}
	if err := MkdirAll(filepath.Dir(dst), int(u.UID), int(u.GID)); err != nil {
		return nil, toConnect(fmt.Errorf("make destination dir: %w", err))
	}
	if err := os.Rename(src, dst); err != nil {
		return nil, toConnect(err)
	}
	e, err := Entry(dst)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&fspb.MoveResponse{Entry: e}), nil
}

// ListDir lists a directory down to the requested depth (default 1).
func (s *Service) ListDir(ctx context.Context, req *connect.Request[fspb.ListDirRequest]) (*connect.Response[fspb.ListDirResponse], error) {
	u, err := s.user(req.Header())
	if err != nil {
		return nil, err
	}
	root := u.Abs(req.Msg.GetPath())
	fi, err := os.Stat(root) // follows a symlinked root on purpose
	if err != nil {
		return nil, toConnect(err)
	}
	if !fi.IsDir() {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s is not a directory", root))
	}
	depth := int(req.Msg.GetDepth())
	if depth < 1 {
		depth = 1
	}
	var entries []*fspb.EntryInfo
	if err := list(ctx, root, depth, newNames(), &entries); err != nil {
		return nil, toConnect(fmt.Errorf("list %s: %w", root, err))
	}
	return connect.NewResponse(&fspb.ListDirResponse{Entries: entries}), nil
}

// list appends the entries of dir and, while depth allows, of its
// subdirectories (symlinked directories are not followed).
func list(ctx context.Context, dir string, depth int, n *names, out *[]*fspb.EntryInfo) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, de := range des {
		p := filepath.Join(dir, de.Name())
		fi, err := de.Info()
		if err != nil {
			continue // removed meanwhile
		}
		*out = append(*out, entryFromInfo(p, fi, n))
		if depth > 1 && de.IsDir() {
			if err := list(ctx, p, depth-1, n, out); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// Remove deletes an entry, recursively for directories.
func (s *Service) Remove(_ context.Context, req *connect.Request[fspb.RemoveRequest]) (*connect.Response[fspb.RemoveResponse], error) {
	u, err := s.user(req.Header())
	if err != nil {
		return nil, err
	}
	p := u.Abs(req.Msg.GetPath())
	if p == "/" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("refusing to remove /"))
	}
	if _, err := os.Lstat(p); err != nil {
		return nil, toConnect(err)
	}
	if err := os.RemoveAll(p); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&fspb.RemoveResponse{}), nil
}
