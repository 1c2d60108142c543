package process

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/cocoon-run/cocoon/api/gen/process/processconnect"
)

type countingListener struct {
	net.Listener
	writes *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{Conn: c, writes: l.writes}, nil
}

type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// The end event, the end of the Connect stream and the end of the HTTP/1.1
// body leave in one write, so the client wakes up once for them.
func TestStreamEndIsOneWrite(t *testing.T) {
	svc := New(nil)
	mux := http.NewServeMux()
	mux.Handle(svc.Handler())
	srv := httptest.NewUnstartedServer(mux)
	writes := new(atomic.Int64)
	srv.Listener = countingListener{Listener: srv.Listener, writes: writes}
	srv.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = svc.Close(ctx)
		srv.Close()
	})
	client := processconnect.NewProcessClient(srv.Client(), srv.URL, connect.WithProtoJSON())

	// The command waits on a FIFO until the writes before its end are
	// counted: "exit 3" alone can end, and its end be written, before the
	// client has read the start event.
	gate := filepath.Join(t.TempDir(), "gate")
	if err := syscall.Mkfifo(gate, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := client.Start(ctx, connect.NewRequest(sh("read _ < "+gate+"; exit 3")))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.Receive() || s.Msg().GetEvent().GetStart() == nil {
		t.Fatalf("no start event: %v", s.Err())
	}
	before := writes.Load()
	// O_RDWR does not wait for the reader; the line waits in the pipe.
	f, err := os.OpenFile(gate, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("go\n"); err != nil {
		t.Fatal(err)
	}
	var events int
	for s.Receive() {
		events++
		if end := s.Msg().GetEvent().GetEnd(); end == nil || end.GetExitCode() != 3 {
			t.Fatalf("got %v, want only the end event with exit code 3", s.Msg().GetEvent())
		}
	}
	if err := s.Err(); err != nil || events != 1 {
		t.Fatalf("got %d events, err %v; want the end event", events, err)
	}
	if n := writes.Load() - before; n != 1 {
		t.Errorf("the stream's end took %d writes, want 1", n)
	}
}

func TestTailWriterFlushesUntilHeld(t *testing.T) {
	rec := httptest.NewRecorder()
	tw := &tailWriter{ResponseWriter: rec}
	ctx := context.WithValue(context.Background(), tailKey{}, tw)
	tw.Flush()
	if !rec.Flushed {
		t.Fatal("not flushed before the tail")
	}
	rec.Flushed = false
	holdTail(ctx)
	tw.Flush()
	if rec.Flushed {
		t.Error("flushed after holdTail")
	}
	holdTail(context.Background()) // no writer: nothing to hold, no panic
}
