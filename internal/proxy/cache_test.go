package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// countingResolver counts its resolves; before, if set, runs inside one.
type countingResolver struct {
	mu     sync.Mutex
	m      mapResolver
	n      int
	before func()
}

func (c *countingResolver) Resolve(ctx context.Context, id string) (Target, error) {
	c.mu.Lock()
	c.n++
	before := c.before
	c.mu.Unlock()
	if before != nil {
		before()
	}
	return c.m.Resolve(ctx, id)
}

func (c *countingResolver) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// TestRouteCache: a route is read once until it is dropped, expires or a
// drop happened while it was read; errors are not cached.
func TestRouteCache(t *testing.T) {
	ctx := context.Background()
	inner := &countingResolver{m: mapResolver{"sb1": "10.0.0.2", "sb2": "paused"}}
	c := NewRouteCache(inner, time.Hour)
	for range 3 {
		if tg, err := c.Resolve(ctx, "sb1"); err != nil || tg.Addr != "10.0.0.2" {
			t.Fatalf("resolve: %+v %v", tg, err)
		}
	}
	if n := inner.count(); n != 1 {
		t.Errorf("3 resolves read the store %d times, want 1", n)
	}
	c.Invalidate("sb1")
	c.Resolve(ctx, "sb1")
	if n := inner.count(); n != 2 {
		t.Errorf("after Invalidate: %d reads, want 2", n)
	}
	for range 2 {
		if _, err := c.Resolve(ctx, "sb2"); err != ErrPaused {
			t.Errorf("paused: %v", err)
		}
	}
	if n := inner.count(); n != 4 {
		t.Errorf("errors cached: %d reads, want 4", n)
	}
	// A drop while the store is read: the route read is not kept.
	inner.before = func() { c.Invalidate("sb1") }
	c.Invalidate("sb1")
	c.Resolve(ctx, "sb1")
	inner.before = nil
	c.Resolve(ctx, "sb1")
	if n := inner.count(); n != 6 {
		t.Errorf("a route read across a drop was kept: %d reads, want 6", n)
	}
	c.Clear()
	c.Resolve(ctx, "sb1")
	if n := inner.count(); n != 7 {
		t.Errorf("after Clear: %d reads, want 7", n)
	}
	short := NewRouteCache(inner, time.Nanosecond)
	short.Resolve(ctx, "sb1")
	time.Sleep(time.Millisecond)
	short.Resolve(ctx, "sb1")
	if n := inner.count(); n != 9 {
		t.Errorf("expired route kept: %d reads, want 9", n)
	}
}

// TestDropCutsStreams: Drop (a sandbox killed or paused) ends its open
// streams and forgets its route; the next request is resolved again and
// the sandbox is not remembered dead.
func TestDropCutsStreams(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "first\n")
		w.(http.Flusher).Flush()
		if r.URL.Path == "/stream" {
			<-r.Context().Done()
		}
	}))
	defer up.Close()
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(up.URL, "http://"))
	inner := &countingResolver{m: mapResolver{"sb1": host}}
	p := New(NewRouteCache(inner, time.Hour), "", nil)
	front := httptest.NewServer(p)
	defer front.Close()
	get := func(path string) (*http.Response, error) {
		req, _ := http.NewRequest("GET", front.URL+path, nil)
		req.Header.Set("E2b-Sandbox-Id", "sb1")
		req.Header.Set("E2b-Sandbox-Port", port)
		return http.DefaultClient.Do(req)
	}
	stream, err := get("/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	br := bufio.NewReader(stream.Body)
	if l, err := br.ReadString('\n'); l != "first\n" {
		t.Fatalf("first line: %q %v", l, err)
	}
	p.Drop("sb1")
	done := make(chan error, 1)
	go func() { _, err := io.ReadAll(br); done <- err }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream is still open after Drop")
	}
	resp, err := get("/once")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("after Drop: %d, want 200 (not remembered dead)", resp.StatusCode)
	}
	if n := inner.count(); n != 2 {
		t.Errorf("route read %d times, want 2 (once, again after Drop)", n)
	}
}
