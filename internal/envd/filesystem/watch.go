package filesystem

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/fsnotify/fsnotify"

	fspb "github.com/cocoon-run/cocoon/api/gen/filesystem"
)

// maxPolledEvents bounds the events a polling watcher keeps between two
// GetWatcherEvents calls; older events are dropped beyond it.
const maxPolledEvents = 10000

// Filesystem magic numbers (linux/magic.h) of network and FUSE mounts, which
// are watched only when the caller allows it: inotify misses remote changes.
const (
	nfsSuperMagic   = 0x6969
	smbSuperMagic   = 0x517B
	cifsMagic       = 0xFF534D42
	smb2MagicNumber = 0xFE534D42
	fuseSuperMagic  = 0x65735546
)

func onNetworkMount(path string) (bool, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	switch uint32(st.Type) {
	case nfsSuperMagic, smbSuperMagic, cifsMagic, smb2MagicNumber, fuseSuperMagic:
		return true, nil
	}
	return false, nil
}

// dirWatcher turns inotify events under root into FilesystemEvents.
type dirWatcher struct {
	fw           *fsnotify.Watcher
	root         string
	recursive    bool
	includeEntry bool
}

func newDirWatcher(root string, recursive, includeEntry, allowNetwork bool) (*dirWatcher, error) {
	fi, err := os.Stat(root)
	if err != nil {
		return nil, toConnect(err)
	}
	if !fi.IsDir() {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s is not a directory", root))
	}
	if !allowNetwork {
		remote, err := onNetworkMount(root)
		if err != nil {
			return nil, toConnect(err)
		}
		if remote {
			return nil, connect.NewError(connect.CodeFailedPrecondition,
				fmt.Errorf("%s is on a network mount; set allow_network_mounts to watch it", root))
		}
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("create watcher: %w", err))
	}
	w := &dirWatcher{fw: fw, root: root, recursive: recursive, includeEntry: includeEntry}
	if err := fw.Add(root); err != nil {
		fw.Close()
		return nil, toConnect(fmt.Errorf("watch %s: %w", root, err))
	}
	if recursive {
		if err := w.addTree(root, nil); err != nil {
			fw.Close()
			return nil, toConnect(err)
		}
	}
	return w, nil
}

// addTree watches every directory below dir. With emit, it also reports a
// CREATE (and a WRITE for non-empty files) for every entry found: they
// appeared before the new directory was watched (mkdir -p a/b && echo x >
// a/b/f) and inotify saw none of them.
func (w *dirWatcher) addTree(dir string, emit func(*fspb.FilesystemEvent) error) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed meanwhile
			}
			return err
		}
		if p == dir {
			return nil
		}
		if d.IsDir() {
			if err := w.fw.Add(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("watch %s: %w", p, err)
			}
		}
		if emit == nil || isUploadTemp(p) {
			return nil
		}
		if err := emit(w.event(p, fspb.EventType_EVENT_TYPE_CREATE)); err != nil {
			return err
		}
		// Content written before the watch began is a write missed too.
		if fi, err := d.Info(); err == nil && fi.Mode().IsRegular() && fi.Size() > 0 {
			return emit(w.event(p, fspb.EventType_EVENT_TYPE_WRITE))
		}
		return nil
	})
}

func (w *dirWatcher) event(path string, t fspb.EventType) *fspb.FilesystemEvent {
	name, err := filepath.Rel(w.root, path)
	if err != nil {
		name = path
	}
	ev := &fspb.FilesystemEvent{Name: name, Type: t}
	if w.includeEntry && t != fspb.EventType_EVENT_TYPE_REMOVE && t != fspb.EventType_EVENT_TYPE_RENAME {
		if e, err := Entry(path); err == nil {
			ev.Entry = e
		}
	}
	return ev
}

var opTypes = []struct {
	op fsnotify.Op
	t  fspb.EventType
}{
	{fsnotify.Create, fspb.EventType_EVENT_TYPE_CREATE},
	{fsnotify.Write, fspb.EventType_EVENT_TYPE_WRITE},
	{fsnotify.Remove, fspb.EventType_EVENT_TYPE_REMOVE},
	{fsnotify.Rename, fspb.EventType_EVENT_TYPE_RENAME},
	{fsnotify.Chmod, fspb.EventType_EVENT_TYPE_CHMOD},
}

// run delivers events to emit until ctx ends or emit fails. Every
// keepalive (when > 0) it calls onKeepalive instead, from the same
// goroutine, so emit and onKeepalive never race.
func (w *dirWatcher) run(ctx context.Context, emit func(*fspb.FilesystemEvent) error, keepalive time.Duration, onKeepalive func() error) error {
	var tick <-chan time.Time
	if keepalive > 0 && onKeepalive != nil {
		t := time.NewTicker(keepalive)
		defer t.Stop()
		tick = t.C
	}
	uploaded := false // the previous event moved an upload's temporary file away
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick:
			if err := onKeepalive(); err != nil {
				return err
			}
		case err, ok := <-w.fw.Errors:
			if !ok {
				return nil
			}
			// An overflow loses events but the watch goes on.
			if !errors.Is(err, fsnotify.ErrEventOverflow) {
				return fmt.Errorf("watch %s: %w", w.root, err)
			}
		case ev, ok := <-w.fw.Events:
			if !ok {
				return nil
			}
			// An upload renames its temporary file over the target: report
			// that as the target being written, and hide the temporary file.
			if isUploadTemp(ev.Name) {
				uploaded = ev.Has(fsnotify.Rename)
				continue
			}
			wasUpload := uploaded && ev.Has(fsnotify.Create)
			uploaded = false
			for _, ot := range opTypes {
				if !ev.Has(ot.op) {
					continue
				}
				if err := emit(w.event(ev.Name, ot.t)); err != nil {
					return err
				}
			}
			if wasUpload {
				if err := emit(w.event(ev.Name, fspb.EventType_EVENT_TYPE_WRITE)); err != nil {
					return err
				}
			}
			if w.recursive && ev.Has(fsnotify.Create) {
				if fi, err := os.Lstat(ev.Name); err == nil && fi.IsDir() {
					if err := w.fw.Add(ev.Name); err != nil && !errors.Is(err, fs.ErrNotExist) {
						return fmt.Errorf("watch %s: %w", ev.Name, err)
					}
					if err := w.addTree(ev.Name, emit); err != nil {
						return err
					}
				}
			}
		}
	}
}

func (w *dirWatcher) close() { _ = w.fw.Close() }

// WatchDir streams the changes under a directory: a start event first, then
// filesystem events and periodic keepalives, until the client leaves, the
// stream deadline passes or the service closes.
func (s *Service) WatchDir(ctx context.Context, req *connect.Request[fspb.WatchDirRequest], stream *connect.ServerStream[fspb.WatchDirResponse]) error {
	u, err := s.user(req.Header())
	if err != nil {
		return err
	}
	w, err := newDirWatcher(u.Abs(req.Msg.GetPath()), req.Msg.GetRecursive(), req.Msg.GetIncludeEntry(), req.Msg.GetAllowNetworkMounts())
	if err != nil {
		return err
	}
	defer w.close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()

	if err := stream.Send(&fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Start{Start: &fspb.WatchDirResponse_StartEvent{}}}); err != nil {
		return err
	}
	emit := func(ev *fspb.FilesystemEvent) error {
		return stream.Send(&fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Filesystem{Filesystem: ev}})
	}
	keepalive := func() error {
		return stream.Send(&fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Keepalive{Keepalive: &fspb.WatchDirResponse_KeepAlive{}}})
	}
	return w.run(ctx, emit, s.keepalive, keepalive)
}

// pollWatcher buffers the events of one watch for GetWatcherEvents.
type pollWatcher struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	events []*fspb.FilesystemEvent
	err    error
}

func (p *pollWatcher) stop() {
	p.cancel()
	<-p.done
}

func (p *pollWatcher) add(ev *fspb.FilesystemEvent) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.events) >= maxPolledEvents {
		p.events = p.events[1:]
	}
	p.events = append(p.events, ev)
	return nil
}

func (p *pollWatcher) drain() ([]*fspb.FilesystemEvent, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	evs := p.events
	p.events = nil
	return evs, p.err
}

func newWatcherID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b[:])
}

// CreateWatcher starts a watch whose events are fetched by GetWatcherEvents.
func (s *Service) CreateWatcher(_ context.Context, req *connect.Request[fspb.CreateWatcherRequest]) (*connect.Response[fspb.CreateWatcherResponse], error) {
	u, err := s.user(req.Header())
	if err != nil {
		return nil, err
	}
	w, err := newDirWatcher(u.Abs(req.Msg.GetPath()), req.Msg.GetRecursive(), req.Msg.GetIncludeEntry(), req.Msg.GetAllowNetworkMounts())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(s.ctx)
	p := &pollWatcher{cancel: cancel, done: make(chan struct{})}
	id := newWatcherID()
	go func() {
		defer close(p.done)
		defer w.close()
		if err := w.run(ctx, p.add, 0, nil); err != nil {
			s.log.Warn("polling watcher failed", "id", id, "err", err)
			p.mu.Lock()
			p.err = err
			p.mu.Unlock()
		}
	}()
	s.mu.Lock()
	if s.ctx.Err() != nil {
		s.mu.Unlock()
		p.stop()
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("envd is shutting down"))
	}
	s.watchers[id] = p
	s.mu.Unlock()
	return connect.NewResponse(&fspb.CreateWatcherResponse{WatcherId: id}), nil
}

func (s *Service) watcher(id string) (*pollWatcher, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.watchers[id]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("watcher %q not found", id))
	}
	return p, nil
}

// GetWatcherEvents returns and forgets the events seen since the last call.
func (s *Service) GetWatcherEvents(_ context.Context, req *connect.Request[fspb.GetWatcherEventsRequest]) (*connect.Response[fspb.GetWatcherEventsResponse], error) {
	p, err := s.watcher(req.Msg.GetWatcherId())
	if err != nil {
		return nil, err
	}
	evs, err := p.drain()
	if err != nil && len(evs) == 0 {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&fspb.GetWatcherEventsResponse{Events: evs}), nil
}

// RemoveWatcher stops a polling watcher.
func (s *Service) RemoveWatcher(_ context.Context, req *connect.Request[fspb.RemoveWatcherRequest]) (*connect.Response[fspb.RemoveWatcherResponse], error) {
	id := req.Msg.GetWatcherId()
	s.mu.Lock()
	p, ok := s.watchers[id]
	delete(s.watchers, id)
	s.mu.Unlock()
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("watcher %q not found", id))
	}
	p.stop()
	return connect.NewResponse(&fspb.RemoveWatcherResponse{}), nil
}
