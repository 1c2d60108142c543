package proxy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestFailDeadSandbox: when a sandbox's runtime dies nothing answers at its
// address, not even with a reset, so the proxy must end what is in flight
// itself: a request waiting for its answer gets 502 naming the sandbox and
// the reason, an open stream ends, and later requests get the 502 at once.
// No internal address appears in any answer.
func TestFailDeadSandbox(t *testing.T) {
	arrived := make(chan string, 4)
	mux := http.NewServeMux()
	mux.HandleFunc("/hang", func(w http.ResponseWriter, r *http.Request) {
		arrived <- "hang"
		<-r.Context().Done()
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "first\n")
		w.(http.Flusher).Flush()
		arrived <- "stream"
		<-r.Context().Done()
	})
	up := httptest.NewServer(mux)
	defer up.Close()
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(up.URL, "http://"))
	p := New(mapResolver{"sb1": host, "sb2": host}, "", nil)
	front := httptest.NewServer(p)
	defer front.Close()

	get := func(id, path string) (*http.Response, error) {
		req, _ := http.NewRequest("GET", front.URL+path, nil)
		req.Header.Set("E2b-Sandbox-Id", id)
		req.Header.Set("E2b-Sandbox-Port", port)
		return http.DefaultClient.Do(req)
	}
	type result struct {
		status int
		body   string
		err    error
	}
	hung := make(chan result, 1)
	go func() {
		resp, err := get("sb1", "/hang")
		if err != nil {
			hung <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		hung <- result{status: resp.StatusCode, body: string(b)}
	}()
	stream, err := get("sb1", "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	br := bufio.NewReader(stream.Body)
	if l, err := br.ReadString('\n'); l != "first\n" {
		t.Fatalf("stream's first line: %q, %v", l, err)
	}
	// An unrelated sandbox's stream is not touched.
	other, err := get("sb2", "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Body.Close()
	otherBody := bufio.NewReader(other.Body)
	if l, err := otherBody.ReadString('\n'); l != "first\n" {
		t.Fatalf("other stream's first line: %q, %v", l, err)
	}
	for range 3 {
		<-arrived
	}

	t0 := time.Now()
	p.Fail("sb1", "out of memory")

	checkBody := func(what string, status int, body string) {
		t.Helper()
		var e struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		if err := json.Unmarshal([]byte(body), &e); err != nil || status != http.StatusBadGateway || e.Code != http.StatusBadGateway {
			t.Errorf("%s: got %d %q, want 502 with {code, message}", what, status, body)
		}
		if !strings.Contains(e.Message, "sb1") || !strings.Contains(e.Message, "out of memory") {
			t.Errorf("%s: message %q does not name the sandbox and the reason", what, e.Message)
		}
		if strings.Contains(e.Message, host) {
			t.Errorf("%s: message %q shows the internal address %s", what, e.Message, host)
		}
	}
	select {
	case r := <-hung:
		if r.err != nil {
			t.Fatalf("request in flight: %v", r.err)
		}
		checkBody("request in flight", r.status, r.body)
	case <-time.After(5 * time.Second):
		t.Fatal("the request in flight to the dead sandbox still hangs 5 s after Fail")
	}
	ended := make(chan error, 1)
	go func() { _, err := br.ReadString('\n'); ended <- err }()
	select {
	case err := <-ended:
		if err == nil {
			t.Error("the open stream went on after Fail")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the open stream to the dead sandbox still hangs 5 s after Fail")
	}
	t.Logf("in-flight request and stream failed %v after Fail", time.Since(t0).Round(time.Millisecond))

	resp, err := get("sb1", "/hang")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	checkBody("request after Fail", resp.StatusCode, string(b))

	// sb2's stream is still open: a read waits rather than failing.
	select {
	case <-arrived:
		t.Error("unexpected request")
	default:
	}
	readOther := make(chan error, 1)
	go func() { _, err := otherBody.ReadString('\n'); readOther <- err }()
	select {
	case err := <-readOther:
		t.Errorf("the stream of another sandbox ended: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
}
