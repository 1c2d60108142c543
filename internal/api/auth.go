package api

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/cocoon-run/cocoon/internal/store"
)

type ctxKey int

const principalKey ctxKey = iota

// principal is the authenticated caller of a request.
type principal struct {
	teamID string
	keyID  string
}

func principalFrom(ctx context.Context) principal {
	p, _ := ctx.Value(principalKey).(principal)
	return p
}

// authenticate resolves X-API-KEY (or a bearer token) to a team. Unknown and
// missing keys both get 401.
func (s *Server) authenticate(r *http.Request) (*http.Request, error) {
	key := r.Header.Get("X-API-KEY")
	if key == "" {
		key = bearer(r)
	}
	if key == "" {
		return r, errorf(http.StatusUnauthorized, "missing API key: set the X-API-KEY header")
	}
	k, err := s.store.APIKeyByHash(r.Context(), store.HashAPIKey(key))
	if errors.Is(err, store.ErrNotFound) {
		return r, errorf(http.StatusUnauthorized, "invalid API key")
	}
	if err != nil {
		return r, fmt.Errorf("look up api key: %w", err)
	}
	s.touchKey(r.Context(), k)
	ctx := context.WithValue(r.Context(), principalKey, principal{teamID: k.TeamID, keyID: k.ID})
	return r.WithContext(ctx), nil
}

// touchKey records key use at most once a minute per key, so reads stay reads.
func (s *Server) touchKey(ctx context.Context, k store.APIKey) {
	now := s.now()
	if now.Sub(k.LastUsedAt) < time.Minute {
		return
	}
	if err := s.store.TouchAPIKey(ctx, k.ID, now); err != nil {
		s.logger.WarnContext(ctx, "touch api key", "key", k.ID, "err", err)
	}
}

// authenticateAdmin checks the admin token from X-Admin-Token or a bearer
// token, in constant time. With no admin token configured, admin is off.
func (s *Server) authenticateAdmin(r *http.Request) error {
	tok := r.Header.Get("X-Admin-Token")
	if tok == "" {
		tok = bearer(r)
	}
	if s.cfg.AdminToken == "" || tok == "" ||
		subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.AdminToken)) != 1 {
		return errorf(http.StatusUnauthorized, "invalid or missing admin token")
	}
	return nil
}

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// rateKey is the bucket a request draws from: its API key's team (all of
// a team's keys share one limit, so more keys buy no more requests), or
// "admin".
func rateKey(r *http.Request) string {
	if p := principalFrom(r.Context()); p.keyID != "" {
		return "team:" + p.teamID
	}
	return "admin"
}
