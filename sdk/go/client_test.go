package cocoon

import (
	"context"
	"encoding/binary"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func testClient(t *testing.T, h http.Handler) *Client {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, err := NewClient(Config{APIKey: "k", APIURL: srv.URL, SandboxURL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestTypedErrors(t *testing.T) {
	cases := []struct {
		status int
		body   string
		check  func(error) bool
	}{
		{404, `{"code":404,"message":"sandbox \"x\" not found"}`, func(err error) bool { var e *NotFoundError; return errors.As(err, &e) }},
		{401, `{"code":401,"message":"bad key"}`, func(err error) bool { var e *AuthError; return errors.As(err, &e) }},
		{429, `{"code":429,"message":"slow down"}`, func(err error) bool {
			var e *RateLimitError
			return errors.As(err, &e) && e.RetryAfter == time.Second
		}},
		{504, `{"code":504,"message":"timeout"}`, func(err error) bool { var e *TimeoutError; return errors.As(err, &e) }},
		{502, `{"code":502,"message":"sandbox \"abc\" is dead: out of memory"}`, func(err error) bool {
			var e *SandboxKilledError
			return errors.As(err, &e) && e.SandboxID == "abc" && e.Reason == "out of memory"
		}},
		{400, `{"code":"not_found","message":"no such file"}`, func(err error) bool { var e *NotFoundError; return errors.As(err, &e) }},
		{409, `{"code":409,"message":"paused"}`, func(err error) bool { var e *APIError; return errors.As(err, &e) && e.Status == 409 }},
	}
	for _, tc := range cases {
		err := newHTTPError(tc.status, http.Header{"Retry-After": {"1"}}, []byte(tc.body))
		if !tc.check(err) {
			t.Errorf("%d %s: got %T %v", tc.status, tc.body, err, err)
		}
		var ae *APIError
		if !errors.As(err, &ae) {
			t.Errorf("%d: not an *APIError: %T", tc.status, err)
		}
	}
}

// Idempotent calls are retried on 503; a create is not.
func TestRetries(t *testing.T) {
	var gets, posts atomic.Int32
	c := testClient(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-API-Key") != "k" {
			t.Errorf("no key")
		}
		n := gets.Add(0)
		if r.Method == http.MethodPost {
			posts.Add(1)
		} else {
			n = gets.Add(1)
		}
		if r.Method == http.MethodPost || n < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte(`{"sandboxID":"s","state":"running"}`))
	}))
	info, err := c.Info(context.Background(), "s")
	if err != nil || info.State != StateRunning || gets.Load() != 3 {
		t.Fatalf("info after %d attempts: %+v %v", gets.Load(), info, err)
	}
	if _, err := c.Create(context.Background(), CreateOptions{}); err == nil || posts.Load() != 1 {
		t.Fatalf("create: %d attempts, %v", posts.Load(), err)
	}
}

// A stream's end-of-stream error is the typed error of its Connect code;
// one without an end-of-stream envelope is an error too.
func TestStreamEnd(t *testing.T) {
	frame := func(flag byte, s string) []byte {
		b := make([]byte, 5, 5+len(s))
		b[0] = flag
		binary.BigEndian.PutUint32(b[1:], uint32(len(s)))
		return append(b, s...)
	}
	var body [][]byte
	c := testClient(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" { // whyBroken's probe: the sandbox is alive
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if r.Header.Get("Content-Type") != "application/connect+json" || r.Header.Get("E2b-Sandbox-Id") != "sb" {
			t.Errorf("headers: %v", r.Header)
		}
		for _, b := range body {
			w.Write(b)
		}
	}))
	sb := c.newSandbox(sandboxReply{SandboxID: "sb"})
	body = [][]byte{frame(0, `{"event":{"start":{"pid":7}}}`), frame(0, `{"event":{"data":{"stdout":"aGk="}}}`),
		frame(0, `{"event":{"end":{"exitCode":2,"exited":true}}}`), frame(2, `{}`)}
	res, err := sb.Commands.Run(context.Background(), "x", nil)
	var exit *CommandExitError
	if !errors.As(err, &exit) || exit.ExitCode != 2 || res != nil && res.Stdout != "hi" || exit.Stdout != "hi" {
		t.Fatalf("run: %+v %v", res, err)
	}
	body = [][]byte{frame(0, `{"event":{"start":{"pid":7}}}`), frame(2, `{"error":{"code":"not_found","message":"gone"}}`)}
	h, err := sb.Commands.Start(context.Background(), "x", nil)
	if err != nil {
		t.Fatal(err)
	}
	var nf *NotFoundError
	if _, err := h.Wait(context.Background()); !errors.As(err, &nf) {
		t.Fatalf("end-of-stream error: %v", err)
	}
	body = [][]byte{frame(0, `{"event":{"start":{"pid":7}}}`)}
	h, err = sb.Commands.Start(context.Background(), "x", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Wait(context.Background()); err == nil {
		t.Fatal("a stream without its end-of-stream envelope ended cleanly")
	}
}

func TestConfigFromEnv(t *testing.T) {
	t.Setenv("E2B_API_KEY", "")
	if _, err := NewClient(Config{}); err == nil {
		t.Fatal("a client without a key")
	}
	t.Setenv("E2B_API_KEY", "key")
	t.Setenv("E2B_API_URL", "")
	t.Setenv("E2B_SANDBOX_URL", "")
	t.Setenv("E2B_DOMAIN", "example.org")
	c, err := NewClient(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if c.cfg.APIURL != "https://api.example.org" {
		t.Fatalf("api url %q", c.cfg.APIURL)
	}
	if base, _ := c.sandboxBase("abc", "", EnvdPort); base != "https://49983-abc.example.org" {
		t.Fatalf("sandbox url %q", base)
	}
}
