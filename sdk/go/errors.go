package cocoon

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// APIError is an error reply of the API, of the sandbox proxy or of envd.
// The typed errors below embed it; errors.As(err, &apiErr) with
// apiErr *APIError matches them all.
type APIError struct {
	// Status is the HTTP status; 0 when the error ended a stream.
	Status int
	// Code is envd's Connect code ("not_found", "invalid_argument", …), or
	// empty when the API or the proxy answered.
	Code string
	// Message is the server's explanation.
	Message string
}

func (e *APIError) Error() string {
	switch {
	case e.Code != "" && e.Status != 0:
		return fmt.Sprintf("%s (%d %s)", e.Message, e.Status, e.Code)
	case e.Code != "":
		return fmt.Sprintf("%s (%s)", e.Message, e.Code)
	default:
		return fmt.Sprintf("%s (%d)", e.Message, e.Status)
	}
}

// NotFoundError: no such sandbox, template, file or process.
type NotFoundError struct{ APIError }

// AuthError: the API key (or the sandbox's access token) was refused.
type AuthError struct{ APIError }

// TimeoutError: the server gave up waiting, or a command outlived
// RunOptions.Timeout (it was killed). A cancelled or expired
// context.Context is reported as the context's own error instead.
type TimeoutError struct{ APIError }

// RateLimitError: too many requests; RetryAfter is the server's hint.
type RateLimitError struct {
	APIError
	RetryAfter time.Duration
}

// SandboxKilledError: the sandbox died or was killed while the call was
// being made; Reason is the server's word for why (e.g. "killed",
// "timeout", "out of memory").
type SandboxKilledError struct {
	APIError
	SandboxID string
	Reason    string
}

func (e *NotFoundError) Error() string  { return "not found: " + e.APIError.Error() }
func (e *AuthError) Error() string      { return "unauthorized: " + e.APIError.Error() }
func (e *TimeoutError) Error() string   { return "timeout: " + e.APIError.Error() }
func (e *RateLimitError) Error() string { return "rate limited: " + e.APIError.Error() }
func (e *SandboxKilledError) Error() string {
	return fmt.Sprintf("sandbox %s was killed: %s", e.SandboxID, e.Reason)
}

func (e *NotFoundError) Unwrap() error      { return &e.APIError }
func (e *AuthError) Unwrap() error          { return &e.APIError }
func (e *TimeoutError) Unwrap() error       { return &e.APIError }
func (e *RateLimitError) Unwrap() error     { return &e.APIError }
func (e *SandboxKilledError) Unwrap() error { return &e.APIError }

// ConnectionError: the server could not be reached at all.
type ConnectionError struct {
	// URL is the base URL that failed; Setting names what sets it.
	URL, Setting string
	Err          error
}

func (e *ConnectionError) Error() string {
	return fmt.Sprintf("cannot reach %s (set %s): %v", e.URL, e.Setting, e.Err)
}

func (e *ConnectionError) Unwrap() error { return e.Err }

// CommandExitError is returned with the result of a command that exited
// with a non-zero code (or was killed by a signal).
type CommandExitError struct{ CommandResult }

func (e *CommandExitError) Error() string {
	if msg := e.CommandResult.Error; msg != "" {
		return fmt.Sprintf("command exited with code %d: %s", e.ExitCode, msg)
	}
	return fmt.Sprintf("command exited with code %d", e.ExitCode)
}

// deadRE matches the proxy's answer for a sandbox that died
// (`sandbox "<id>" is dead: <reason>`).
var deadRE = regexp.MustCompile(`^sandbox "([^"]*)" is dead: (.*)$`)

// errorBody is the JSON of an error reply: the API and the proxy send a
// numeric code (the HTTP status), envd a Connect code string.
type errorBody struct {
	Code    json.RawMessage `json:"code"`
	Message string          `json:"message"`
}

// newHTTPError makes the typed error of an error reply.
func newHTTPError(status int, h http.Header, body []byte) error {
	var eb errorBody
	e := APIError{Status: status}
	if json.Unmarshal(body, &eb) == nil && (eb.Message != "" || len(eb.Code) > 0) {
		e.Message = eb.Message
		var s string
		if json.Unmarshal(eb.Code, &s) == nil {
			e.Code = s
		}
	} else {
		e.Message = strings.TrimSpace(string(body))
	}
	if e.Message == "" {
		e.Message = http.StatusText(status)
	}
	return typed(e, h)
}

// typed wraps e in the typed error its status or Connect code calls for.
func typed(e APIError, h http.Header) error {
	if m := deadRE.FindStringSubmatch(e.Message); m != nil {
		return &SandboxKilledError{APIError: e, SandboxID: m[1], Reason: m[2]}
	}
	switch {
	case e.Status == http.StatusNotFound || e.Code == "not_found":
		return &NotFoundError{e}
	case e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden ||
		e.Code == "unauthenticated" || e.Code == "permission_denied":
		return &AuthError{e}
	case e.Status == http.StatusTooManyRequests || e.Code == "resource_exhausted":
		r := &RateLimitError{APIError: e}
		if h != nil {
			if s, err := strconv.Atoi(h.Get("Retry-After")); err == nil {
				r.RetryAfter = time.Duration(s) * time.Second
			}
		}
		return r
	case e.Status == http.StatusGatewayTimeout || e.Status == http.StatusRequestTimeout || e.Code == "deadline_exceeded":
		return &TimeoutError{e}
	}
	return &e
}

// retryable says whether an idempotent call that failed with err may be
// tried again.
func retryable(err error) bool {
	var ce *ConnectionError
	var rl *RateLimitError
	var ae *APIError
	var killed *SandboxKilledError
	switch {
	case errors.As(err, &killed):
		return false
	case errors.As(err, &ce), errors.As(err, &rl):
		return true
	case errors.As(err, &ae):
		return ae.Status == http.StatusBadGateway || ae.Status == http.StatusServiceUnavailable ||
			ae.Status == http.StatusGatewayTimeout || ae.Code == "unavailable"
	}
	return false
}
