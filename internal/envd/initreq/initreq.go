// Package initreq is envd's POST /init as the host sends it: the body, and
// the one function every sender uses (the orchestrator on create and
// resume, the warm pools' warm-up, template builds).
package initreq

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Request is the body of POST /init. Empty fields leave envd's setting as
// it is. envd itself accepts more forms (envd.InitRequest: a numeric
// timestamp, an explicit empty token, "entropy").
type Request struct {
	EnvVars        map[string]string `json:"envVars,omitempty"`
	AccessToken    string            `json:"accessToken,omitempty"`
	DefaultUser    string            `json:"defaultUser,omitempty"`
	DefaultWorkdir string            `json:"defaultWorkdir,omitempty"`
	// Timestamp is the host's clock, RFC 3339.
	Timestamp string `json:"timestamp,omitempty"`
	Hostname  string `json:"hostname,omitempty"`
	// Seed is random data from the host for the guest's RNG.
	Seed []byte `json:"seed,omitempty"`
}

// StatusError is envd's answer with an error status. Unlike a failed
// connection it is final: sending the same request again gets the same.
type StatusError struct {
	Status string // e.g. "400 Bad Request"
	Body   string // the start of envd's message
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("envd /init: %s: %s", e.Status, e.Body)
}

// Send posts r to the envd at base (e.g. "http://10.0.0.2:49983") with
// the access token it currently requires ("" for none).
func Send(ctx context.Context, c *http.Client, base, token string, r Request) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(base, "/")+"/init", bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("X-Access-Token", token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("envd /init: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return &StatusError{Status: resp.Status, Body: strings.TrimSpace(string(msg))}
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}
