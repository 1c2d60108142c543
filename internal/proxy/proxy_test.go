package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// mapResolver is the proxy's boundary: the control plane's lookup.
type mapResolver map[string]string

func (m mapResolver) Resolve(_ context.Context, id string) (Target, error) {
	switch a := m[id]; a {
	case "":
		return Target{}, ErrNotFound
	case "paused":
		return Target{}, ErrPaused
	default:
		return Target{Addr: a, Epoch: 1}, nil
	}
}

func upstream(t *testing.T) (*httptest.Server, string) {
	t.Helper()
	release := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.RequestURI(), r.Host)
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "first\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-time.After(5 * time.Second):
		}
		fmt.Fprint(w, "second\n")
	})
	mux.HandleFunc("/release", func(w http.ResponseWriter, r *http.Request) { close(release) })
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "no upgrade", 400)
			return
		}
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprint(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		rw.Flush()
		line, _ := rw.ReadString('\n')
		fmt.Fprint(rw, "echo:"+line)
		rw.Flush()
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	return srv, u.Host
}

func TestRoute(t *testing.T) {
	p := New(mapResolver{}, "sb.example", nil)
	tests := []struct {
		name     string
		host     string
		hdrID    string
		hdrPort  string
		wantID   string
		wantPort int
		wantErr  bool
	}{
		{name: "headers", host: "127.0.0.1:3001", hdrID: "abc123", hdrPort: "49983", wantID: "abc123", wantPort: 49983},
		{name: "host", host: "8080-abc123.sb.example", wantID: "abc123", wantPort: 8080},
		{name: "host with port", host: "8080-abc123.sb.example:443", wantID: "abc123", wantPort: 8080},
		{name: "bad header port", host: "x", hdrID: "abc", hdrPort: "nope", wantErr: true},
		{name: "port out of range", host: "x", hdrID: "abc", hdrPort: "70000", wantErr: true},
		{name: "other domain", host: "8080-abc123.other.example", wantErr: true},
		{name: "no port label", host: "abc123.sb.example", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			r.Host = tt.host
			if tt.hdrID != "" {
				r.Header.Set("E2b-Sandbox-Id", tt.hdrID)
				r.Header.Set("E2b-Sandbox-Port", tt.hdrPort)
			}
			id, port, err := p.Route(r)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if id != tt.wantID || port != tt.wantPort {
				t.Errorf("got %q:%d, want %q:%d", id, port, tt.wantID, tt.wantPort)
			}
		})
	}
}

func TestForwarding(t *testing.T) {
	_, up := upstream(t)
	host, port, _ := net.SplitHostPort(up)
	p := New(mapResolver{"sb1": host, "sb2": "paused"}, "", nil)
	front := httptest.NewServer(p)
	defer front.Close()

	do := func(id, path string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", front.URL+path, nil)
		req.Header.Set("E2b-Sandbox-Id", id)
		req.Header.Set("E2b-Sandbox-Port", port)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}

	resp, body := do("sb1", "/echo?x=1")
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "GET /echo?x=1") {
		t.Errorf("echo: got %d %q", resp.StatusCode, body)
	}

	for _, tc := range []struct {
		id   string
		want int
	}{{"nope", 404}, {"sb2", 409}} {
		resp, body := do(tc.id, "/echo")
		var e struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		if err := json.Unmarshal([]byte(body), &e); err != nil || resp.StatusCode != tc.want || e.Code != tc.want || e.Message == "" {
			t.Errorf("%s: got %d %q, want %d with {code,message}", tc.id, resp.StatusCode, body, tc.want)
		}
	}
}

func TestStreamingIsUnbuffered(t *testing.T) {
	_, up := upstream(t)
	host, port, _ := net.SplitHostPort(up)
	p := New(mapResolver{"sb1": host}, "", nil)
	front := httptest.NewServer(p)
	defer front.Close()

	req, _ := http.NewRequest("GET", front.URL+"/stream", nil)
	req.Host = port + "-sb1.anything"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	got := make(chan string, 1)
	go func() { l, _ := br.ReadString('\n'); got <- l }()
	select {
	case l := <-got:
		if l != "first\n" {
			t.Fatalf("first chunk = %q", l)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("first chunk did not arrive before the upstream finished: the proxy buffers")
	}
	if _, err := http.Get("http://" + up + "/release"); err != nil {
		t.Fatal(err)
	}
	if l, _ := br.ReadString('\n'); l != "second\n" {
		t.Errorf("second chunk = %q", l)
	}
}

func TestWebsocketUpgrade(t *testing.T) {
	_, up := upstream(t)
	host, port, _ := net.SplitHostPort(up)
	p := New(mapResolver{"sb1": host}, "", nil)
	front := httptest.NewServer(p)
	defer front.Close()

	conn, err := net.Dial("tcp", strings.TrimPrefix(front.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: sb1\r\nE2b-Sandbox-Port: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", port)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status = %d, want 101", resp.StatusCode)
	}
	fmt.Fprint(conn, "hello\n")
	if l, _ := br.ReadString('\n'); l != "echo:hello\n" {
		t.Errorf("got %q, want echo:hello", l)
	}
}

// BenchmarkOverhead compares a small request through the proxy with the
// same request straight to the upstream; the difference is the proxy's cost.
func BenchmarkOverhead(b *testing.B) {
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })
	up := httptest.NewServer(mux)
	defer up.Close()
	u, _ := url.Parse(up.URL)
	host, port, _ := net.SplitHostPort(u.Host)
	front := httptest.NewServer(New(mapResolver{"sb1": host}, "", nil))
	defer front.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	run := func(b *testing.B, url string, proxied bool) {
		for b.Loop() {
			req, _ := http.NewRequest("GET", url+"/health", nil)
			if proxied {
				req.Header.Set("E2b-Sandbox-Id", "sb1")
				req.Header.Set("E2b-Sandbox-Port", port)
			}
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	b.Run("direct", func(b *testing.B) { run(b, up.URL, false) })
	b.Run("proxied", func(b *testing.B) { run(b, front.URL, true) })
}
