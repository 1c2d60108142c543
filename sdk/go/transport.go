package cocoon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// userAgent is sent with every request.
const userAgent = "cocoon-go-sdk/0.1"

// request is one HTTP call, built again for every attempt.
type request struct {
	method string
	url    string
	header http.Header
	// body is the request body (nil: none); marshalled once as JSON when it
	// is not a []byte.
	body any
	// idempotent calls are retried (see Config.MaxRetries).
	idempotent bool
	// stream: no RequestTimeout; the caller closes the response body.
	stream bool
	// base and setting name the base URL in a ConnectionError.
	base, setting string
}

// do sends r, retrying it when idempotent, and returns the response of a 2xx
// (the caller closes its body) or the typed error of any other.
func (c *Client) do(ctx context.Context, r request) (*http.Response, error) {
	var payload []byte
	contentType := ""
	switch b := r.body.(type) {
	case nil:
	case []byte:
		payload = b
	default:
		var err error
		if payload, err = json.Marshal(b); err != nil {
			return nil, fmt.Errorf("encode request: %w", err)
		}
		contentType = "application/json"
	}
	attempts := 1
	if r.idempotent {
		attempts += c.cfg.MaxRetries
	}
	var last error
	for i := 0; i < attempts; i++ {
		if i > 0 {
			wait := time.Duration(100<<(i-1)) * time.Millisecond
			var rl *RateLimitError
			if errors.As(last, &rl) && rl.RetryAfter > 0 {
				wait = min(rl.RetryAfter, 5*time.Second)
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, last
			case <-t.C:
			}
		}
		resp, err := c.once(ctx, r, payload, contentType)
		if err == nil {
			return resp, nil
		}
		last = err
		if ctx.Err() != nil || !retryable(err) {
			break
		}
	}
	return nil, last
}

// once sends one attempt of r.
func (c *Client) once(ctx context.Context, r request, payload []byte, contentType string) (*http.Response, error) {
	if r.stream {
		return c.send(ctx, r, payload, contentType)
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	resp, err := c.send(ctx, r, payload, contentType)
	if err != nil {
		return nil, err
	}
	// Read the whole body now: the timeout ends with this call.
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("%s %s: read reply: %w", r.method, r.url, err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return resp, nil
}

// send sends one attempt of r and returns a 2xx response or the typed
// error of any other.
func (c *Client) send(ctx context.Context, r request, payload []byte, contentType string) (*http.Response, error) {
	var body io.Reader
	if payload != nil {
		body = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, r.url, body)
	if err != nil {
		return nil, err
	}
	for k, v := range r.header {
		req.Header[k] = v
	}
	if contentType != "" && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("%s %s: %w", r.method, r.url, ctxErr)
		}
		return nil, &ConnectionError{URL: r.base, Setting: r.setting, Err: err}
	}
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		return nil, newHTTPError(resp.StatusCode, resp.Header, b)
	}
	return resp, nil
}

// api calls the REST API at path (with query q); out, when not nil,
// receives the JSON reply.
func (c *Client) api(ctx context.Context, method, path string, q url.Values, in, out any) (http.Header, error) {
	u := c.cfg.APIURL + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	h := http.Header{}
	h.Set("X-API-Key", c.cfg.APIKey)
	resp, err := c.do(ctx, request{
		method: method, url: u, header: h, body: in,
		// Setting a timeout is idempotent too: it names an end, not a delta.
		idempotent: method == http.MethodGet || method == http.MethodDelete || strings.HasSuffix(path, "/timeout"),
		base:       c.cfg.APIURL, setting: "E2B_API_URL",
	})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return nil, fmt.Errorf("%s %s: decode reply: %w", method, path, err)
		}
	}
	return resp.Header, nil
}

// envdRequest makes a request to envd of sandbox s at path.
func (s *Sandbox) envdRequest(method, path string, q url.Values, user string) request {
	base, h := s.client.sandboxBase(s.ID, s.domain, EnvdPort)
	if s.accessToken != "" {
		h.Set("X-Access-Token", s.accessToken)
	}
	if user != "" {
		h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":")))
	}
	u := base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	setting := "E2B_SANDBOX_URL"
	if s.client.cfg.SandboxURL == "" {
		setting = "E2B_SANDBOX_URL or E2B_DOMAIN"
	}
	return request{method: method, url: u, header: h, base: base, setting: setting}
}

// sandboxBase is the base URL of port on sandbox id and the headers that
// route a request there.
func (c *Client) sandboxBase(id, domain string, port int) (string, http.Header) {
	h := http.Header{}
	if c.cfg.Debug && c.cfg.SandboxURL == "" {
		return fmt.Sprintf("http://localhost:%d", port), h
	}
	if c.cfg.SandboxURL != "" {
		h.Set("E2b-Sandbox-Id", id)
		h.Set("E2b-Sandbox-Port", strconv.Itoa(port))
		return c.cfg.SandboxURL, h
	}
	if domain == "" {
		domain = c.cfg.Domain
	}
	return fmt.Sprintf("https://%d-%s.%s", port, id, domain), h
}

// unary calls a Connect RPC of envd with JSON encoding.
func (s *Sandbox) unary(ctx context.Context, procedure string, user string, in, out any, idempotent bool) error {
	r := s.envdRequest(http.MethodPost, "/"+procedure, nil, user)
	r.header.Set("Connect-Protocol-Version", "1")
	r.body = in
	r.idempotent = idempotent
	resp, err := s.client.do(ctx, r)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s: decode reply: %w", procedure, err)
	}
	return nil
}

// whyBroken explains a stream of sandbox s that broke with err: when the
// sandbox died meanwhile the proxy says so (a SandboxKilledError, or a
// NotFoundError once it is forgotten), otherwise err stands.
func (s *Sandbox) whyBroken(err error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r := s.envdRequest(http.MethodGet, "/health", nil, "")
	resp, perr := s.client.once(ctx, r, nil, "")
	if perr == nil {
		resp.Body.Close()
		return err
	}
	var killed *SandboxKilledError
	var nf *NotFoundError
	if errors.As(perr, &killed) || errors.As(perr, &nf) {
		return fmt.Errorf("%w (%v)", perr, err)
	}
	return err
}

// stream is a server stream of a Connect RPC.
type stream struct {
	body io.ReadCloser
	r    *bufio.Reader
}

// openStream calls a server-streaming Connect RPC of envd.
func (s *Sandbox) openStream(ctx context.Context, procedure, user string, in any) (*stream, error) {
	msg, err := json.Marshal(in)
	if err != nil {
		return nil, fmt.Errorf("encode request: %w", err)
	}
	env := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(env[1:], uint32(len(msg)))
	env = append(env, msg...)
	r := s.envdRequest(http.MethodPost, "/"+procedure, nil, user)
	r.header.Set("Connect-Protocol-Version", "1")
	r.header.Set("Content-Type", "application/connect+json")
	r.body = env
	r.stream = true
	resp, err := s.client.do(ctx, r)
	if err != nil {
		return nil, err
	}
	return &stream{body: resp.Body, r: bufio.NewReader(resp.Body)}, nil
}

// endOfStream is the last envelope of a stream.
type endOfStream struct {
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// next decodes the next message into v; io.EOF after a clean end of
// stream.
func (st *stream) next(v any) error {
	var hdr [5]byte
	if _, err := io.ReadFull(st.r, hdr[:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // no end-of-stream envelope
		}
		return fmt.Errorf("stream broken: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > 64<<20 {
		return fmt.Errorf("stream message of %d bytes", n)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(st.r, buf); err != nil {
		return fmt.Errorf("stream broken: %w", err)
	}
	if hdr[0]&0x02 != 0 {
		var end endOfStream
		if err := json.Unmarshal(buf, &end); err != nil {
			return fmt.Errorf("decode end of stream: %w", err)
		}
		if end.Error != nil {
			return typed(APIError{Code: end.Error.Code, Message: end.Error.Message}, nil)
		}
		return io.EOF
	}
	return json.Unmarshal(buf, v)
}

func (st *stream) close() error { return st.body.Close() }
