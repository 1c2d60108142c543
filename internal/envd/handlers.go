package envd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/cocoon-run/cocoon/internal/envd/files"
	"github.com/cocoon-run/cocoon/internal/envd/identity"
)

// maxInitBody bounds the /init request body.
const maxInitBody = 1 << 20

// clockTolerance is the drift /init leaves alone.
const clockTolerance = 50 * time.Millisecond

func (s *Server) health(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("X-Envd-Version", Version)
	w.WriteHeader(http.StatusNoContent)
}

// InitRequest is the body of POST /init, sent by the orchestrator on every
// create and resume.
type InitRequest struct {
	EnvVars     map[string]string `json:"envVars,omitempty"`
	AccessToken *string           `json:"accessToken,omitempty"`
	DefaultUser string            `json:"defaultUser,omitempty"`
	// DefaultWorkdir is where processes start when they name no directory.
	DefaultWorkdir string `json:"defaultWorkdir,omitempty"`
	// Timestamp is the host's time: an RFC 3339 string or unix seconds.
	Timestamp json.RawMessage `json:"timestamp,omitempty"`
	Hostname  string          `json:"hostname,omitempty"`
	// Seed (alias Entropy) is random data from the host, base64 in JSON.
	Seed    []byte `json:"seed,omitempty"`
	Entropy []byte `json:"entropy,omitempty"`
}

// parseTimestamp reads an RFC 3339 string, or unix seconds as a number or
// numeric string.
func parseTimestamp(raw json.RawMessage) (time.Time, error) {
	var str string
	if err := json.Unmarshal(raw, &str); err != nil {
		var f float64
		if err := json.Unmarshal(raw, &f); err != nil {
			return time.Time{}, fmt.Errorf("timestamp is neither a string nor a number")
		}
		return unixFloat(f)
	}
	if t, err := time.Parse(time.RFC3339Nano, str); err == nil {
		return t, nil
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(str), 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("timestamp %q is neither RFC 3339 nor unix seconds", str)
	}
	return unixFloat(f)
}

func unixFloat(f float64) (time.Time, error) {
	if f <= 0 || math.IsInf(f, 0) || math.IsNaN(f) || f > 1<<40 {
		return time.Time{}, fmt.Errorf("timestamp %v out of range", f)
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), nil
}

// init applies /init. When a token is set, /init must carry it: after a
// snapshot restore the orchestrator knows the old token and rotates it here.
func (s *Server) init(w http.ResponseWriter, r *http.Request) {
	if !tokenOK(s.sess.Token(), r.Header.Get(AccessTokenHeader)) {
		files.WriteError(w, http.StatusUnauthorized, "missing or invalid access token")
		return
	}
	var req InitRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxInitBody))
	if err := dec.Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		files.WriteError(w, http.StatusBadRequest, fmt.Sprintf("decode init body: %v", err))
		return
	}
	var ts time.Time
	if len(req.Timestamp) > 0 && string(req.Timestamp) != "null" {
		t, err := parseTimestamp(req.Timestamp)
		if err != nil {
			files.WriteError(w, http.StatusBadRequest, err.Error())
			return
		}
		ts = t
	}

	// Machine settings first: a restored clone must not run a request with
	// the template's clock or RNG state.
	if !ts.IsZero() {
		if d := time.Since(ts); d > clockTolerance || d < -clockTolerance {
			s.systemErr("set clock", s.sys.SetClock(ts))
		}
	}
	seed := append(req.Seed, req.Entropy...)
	if len(seed) > 0 {
		s.systemErr("reseed rng", s.sys.AddEntropy(seed))
	}
	// Always: a clone keeps the template's hostname when /init names none,
	// and /etc/hosts must resolve it either way.
	s.systemErr("set hostname", s.sys.SetHostname(req.Hostname))

	if len(req.EnvVars) > 0 {
		s.sess.MergeEnvs(req.EnvVars)
	}
	if req.DefaultUser != "" {
		if _, err := identity.Lookup(req.DefaultUser); err != nil {
			s.log.Warn("init: default user does not exist; requests fall back to envd's account", "user", req.DefaultUser)
		}
		s.sess.SetDefaultUser(req.DefaultUser)
	}
	if req.DefaultWorkdir != "" {
		s.sess.SetDefaultWorkdir(req.DefaultWorkdir)
	}
	if req.AccessToken != nil {
		s.sess.SetToken(*req.AccessToken)
	}
	s.log.Info("init", "envs", len(req.EnvVars), "default_user", req.DefaultUser,
		"token_set", req.AccessToken != nil, "clock", !ts.IsZero(), "hostname", req.Hostname, "seed_bytes", len(seed))
	w.WriteHeader(http.StatusNoContent)
}

// systemErr logs a failed machine setting; /init still succeeds, since a
// sandbox without it works and failing would fail every create.
func (s *Server) systemErr(what string, err error) {
	switch {
	case err == nil:
	case errors.Is(err, errNotRoot):
		s.log.Debug("init: skipped, not root", "what", what)
	default:
		s.log.Warn("init: "+what+" failed", "err", err)
	}
}

func (s *Server) envs(w http.ResponseWriter, _ *http.Request) {
	envs := s.sess.Envs()
	if envs == nil {
		envs = map[string]string{}
	}
	writeJSON(w, envs)
}

func (s *Server) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	m, err := s.metrics.Sample()
	if err != nil {
		s.log.Error("sample metrics", "err", err)
		files.WriteError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, m)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(v)
}
