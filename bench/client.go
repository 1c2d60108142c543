package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/cocoon-run/cocoon/api/gen/process"
	"github.com/cocoon-run/cocoon/api/gen/process/processconnect"
	"github.com/cocoon-run/cocoon/internal/envd/identity"
)

const envdPort = 49983

// Client speaks to a Cocoon server the way the E2B SDK does: REST on the
// API URL, envd (Connect with the JSON codec, /files) through the proxy.
type Client struct {
	APIURL, ProxyURL, APIKey string
	http                     *http.Client
	// Retries429 counts REST requests the server's rate limiter refused
	// (and the client retried after Retry-After).
	Retries429 int
}

// NewClient returns a client with pooled keep-alive connections.
func NewClient(apiURL, proxyURL, apiKey string) *Client {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     60 * time.Second,
	}
	return &Client{APIURL: strings.TrimRight(apiURL, "/"), ProxyURL: strings.TrimRight(proxyURL, "/"),
		APIKey: apiKey, http: &http.Client{Transport: tr}}
}

// Sandbox is what a create returns.
type Sandbox struct {
	ID          string `json:"sandboxID"`
	TemplateID  string `json:"templateID"`
	AccessToken string `json:"envdAccessToken"`
}

func (c *Client) rest(ctx context.Context, method, path string, body any, out any) (int, error) {
	var b []byte
	if body != nil {
		var err error
		if b, err = json.Marshal(body); err != nil {
			return 0, err
		}
	}
	for {
		req, err := http.NewRequestWithContext(ctx, method, c.APIURL+path, bytes.NewReader(b))
		if err != nil {
			return 0, err
		}
		req.Header.Set("X-API-Key", c.APIKey)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := c.http.Do(req)
		if err != nil {
			return 0, fmt.Errorf("%s %s: %w", method, path, err)
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: read: %w", method, path, err)
		}
		if resp.StatusCode == http.StatusTooManyRequests {
			c.Retries429++
			wait := time.Second
			if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
				wait = time.Duration(s) * time.Second
			}
			select {
			case <-ctx.Done():
				return resp.StatusCode, ctx.Err()
			case <-time.After(min(wait, 200*time.Millisecond)):
			}
			continue
		}
		if resp.StatusCode/100 != 2 {
			return resp.StatusCode, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(data)))
		}
		if out != nil && len(data) > 0 {
			if err := json.Unmarshal(data, out); err != nil {
				return resp.StatusCode, fmt.Errorf("%s %s: decode: %w", method, path, err)
			}
		}
		return resp.StatusCode, nil
	}
}

// Create is POST /sandboxes (what the SDK's Sandbox.create sends); it
// returns when the server has restored the sandbox and envd took /init.
func (c *Client) Create(ctx context.Context, template string, timeout int) (Sandbox, error) {
	var sb Sandbox
	_, err := c.rest(ctx, http.MethodPost, "/sandboxes", map[string]any{"templateID": template, "timeout": timeout}, &sb)
	return sb, err
}

// Kill is DELETE /sandboxes/{id}.
func (c *Client) Kill(ctx context.Context, id string) error {
	code, err := c.rest(ctx, http.MethodDelete, "/sandboxes/"+id, nil, nil)
	if code == http.StatusNotFound {
		return nil
	}
	return err
}

// Pause is POST /sandboxes/{id}/pause.
func (c *Client) Pause(ctx context.Context, id string) error {
	_, err := c.rest(ctx, http.MethodPost, "/sandboxes/"+id+"/pause", nil, nil)
	return err
}

// Resume is POST /sandboxes/{id}/resume.
func (c *Client) Resume(ctx context.Context, id string) error {
	_, err := c.rest(ctx, http.MethodPost, "/sandboxes/"+id+"/resume", map[string]any{"timeout": 600}, nil)
	return err
}

// envdHeaders routes a request through the proxy to sb's envd.
func envdHeaders(h http.Header, sb Sandbox, user string) {
	h.Set("E2b-Sandbox-Id", sb.ID)
	h.Set("E2b-Sandbox-Port", strconv.Itoa(envdPort))
	if sb.AccessToken != "" {
		h.Set("X-Access-Token", sb.AccessToken)
	}
	if user != "" {
		identity.SetBasicAuth(h, user)
	}
}

// Health is GET /health of sb's envd through the proxy.
func (c *Client) Health(ctx context.Context, sb Sandbox) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.ProxyURL+"/health", nil)
	if err != nil {
		return err
	}
	envdHeaders(req.Header, sb, "")
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("envd health: %s", resp.Status)
	}
	return nil
}

// headerInterceptor adds the proxy and envd headers to Connect calls.
type headerInterceptor struct {
	sb   Sandbox
	user string
}

func (h headerInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, r connect.AnyRequest) (connect.AnyResponse, error) {
		envdHeaders(r.Header(), h.sb, h.user)
		return next(ctx, r)
	}
}

func (h headerInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, s connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, s)
		envdHeaders(conn.RequestHeader(), h.sb, h.user)
		return conn
	}
}

func (h headerInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// Process returns envd's process service of sb, as user.
func (c *Client) Process(sb Sandbox, user string) processconnect.ProcessClient {
	return processconnect.NewProcessClient(c.http, c.ProxyURL, connect.WithProtoJSON(),
		connect.WithInterceptors(headerInterceptor{sb: sb, user: user}))
}

// RunResult is a finished command.
type RunResult struct {
	Stdout, Stderr string
	ExitCode       int32
	Status         string // envd's, e.g. "exit status 1", "signal: killed"
	Elapsed        time.Duration
}

// Run starts cmd args in sb and waits for it to end, like commands.run.
func (c *Client) Run(ctx context.Context, pc processconnect.ProcessClient, cmd string, args ...string) (RunResult, error) {
	t0 := time.Now()
	stdin := false
	stream, err := pc.Start(ctx, connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: cmd, Args: args},
		Stdin:   &stdin,
	}))
	if err != nil {
		return RunResult{}, fmt.Errorf("start %s: %w", cmd, err)
	}
	defer stream.Close()
	var out, errb strings.Builder
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		if d := ev.GetData(); d != nil {
			out.Write(d.GetStdout())
			errb.Write(d.GetStderr())
		}
		if end := ev.GetEnd(); end != nil {
			r := RunResult{Stdout: out.String(), Stderr: errb.String(), ExitCode: end.GetExitCode(), Status: end.GetStatus(), Elapsed: time.Since(t0)}
			if r.ExitCode != 0 {
				return r, fmt.Errorf("%s exited %d: %s", cmd, r.ExitCode, strings.TrimSpace(r.Stderr))
			}
			return r, nil
		}
	}
	if err := stream.Err(); err != nil {
		return RunResult{}, fmt.Errorf("run %s: %w", cmd, err)
	}
	return RunResult{}, errors.New("run " + cmd + ": stream ended without an end event")
}

// WriteFile uploads data to path in sb (POST /files, raw body).
func (c *Client) WriteFile(ctx context.Context, sb Sandbox, path string, body io.Reader, size int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.ProxyURL+"/files?path="+path+"&username=user", body)
	if err != nil {
		return err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	envdHeaders(req.Header, sb, "")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("upload %s: %w", path, err)
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("upload %s: %s: %s", path, resp.Status, msg)
	}
	return nil
}

// ReadFile downloads path from sb (GET /files) and returns its size.
func (c *Client) ReadFile(ctx context.Context, sb Sandbox, path string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.ProxyURL+"/files?path="+path+"&username=user", nil)
	if err != nil {
		return 0, err
	}
	envdHeaders(req.Header, sb, "")
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("download %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return 0, fmt.Errorf("download %s: %s: %s", path, resp.Status, msg)
	}
	return io.Copy(io.Discard, resp.Body)
}
