package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// Issue 18: one sandbox may hold only so many requests open through the
// proxy; the next one is refused with 429 (before, unbounded), another
// sandbox is not affected, and the slot frees when a request ends.
func TestLimitInFlight(t *testing.T) {
	up, addr := upstream(t)
	lp := New(mapResolver{"sbx1": "127.0.0.1", "sbx2": "127.0.0.1"}, "", nil).Limit(2)
	_, port, _ := net.SplitHostPort(addr)
	srv := httptest.NewServer(lp)
	t.Cleanup(srv.Close)
	get := func(id, path string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		req.Header.Set("E2b-Sandbox-Id", id)
		req.Header.Set("E2b-Sandbox-Port", port)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	// Two streams stay open until released.
	var streams []*http.Response
	for range 2 {
		resp := get("sbx1", "/stream")
		if line, _ := bufio.NewReader(resp.Body).ReadString('\n'); resp.StatusCode != 200 || line != "first\n" {
			t.Fatalf("stream: %d %q", resp.StatusCode, line)
		}
		streams = append(streams, resp)
	}
	for _, tc := range []struct {
		id   string
		want int
	}{{"sbx1", http.StatusTooManyRequests}, {"sbx2", http.StatusOK}} {
		resp := get(tc.id, "/echo")
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: got %d %s, want %d", tc.id, resp.StatusCode, body, tc.want)
		}
		if tc.want == http.StatusTooManyRequests && resp.Header.Get("Retry-After") == "" {
			t.Error("429 without Retry-After")
		}
	}
	// Released and read to the end, the streams free their places.
	http.Get(up.URL + "/release")
	for _, s := range streams {
		io.Copy(io.Discard, s.Body)
		s.Body.Close()
	}
	// The handlers return just after the client has read the end.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		lp.mu.Lock()
		n := len(lp.inflight["sbx1"])
		lp.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d requests still counted in flight", n)
		}
	}
	if resp := get("sbx1", "/echo"); resp.StatusCode != http.StatusOK {
		t.Errorf("after the streams ended: %d, want 200", resp.StatusCode)
	} else {
		resp.Body.Close()
	}
}
