package api

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/cocoon-run/cocoon/internal/store"
)

type teamJSON struct {
	TeamID    string    `json:"teamID"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"createdAt"`
}

type keyJSON struct {
	KeyID      string     `json:"keyID"`
	TeamID     string     `json:"teamID"`
	Name       string     `json:"name"`
	Prefix     string     `json:"prefix"`
	CreatedAt  time.Time  `json:"createdAt"`
	LastUsedAt *time.Time `json:"lastUsedAt"`
	Key        string     `json:"key,omitempty"`
}

func keyOut(k store.APIKey) keyJSON {
	out := keyJSON{KeyID: k.ID, TeamID: k.TeamID, Name: k.Name, Prefix: k.Prefix, CreatedAt: k.CreatedAt.UTC()}
	if !k.LastUsedAt.IsZero() {
		t := k.LastUsedAt.UTC()
		out.LastUsedAt = &t
	}
	return out
}

func (s *Server) adminCreateTeam(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Name string `json:"name"`
	}
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if strings.TrimSpace(req.Name) == "" {
		return errorf(http.StatusBadRequest, "name is required")
	}
	t := store.Team{ID: uuid.NewString(), Name: strings.TrimSpace(req.Name), CreatedAt: s.now().UTC()}
	if err := s.store.CreateTeam(r.Context(), t); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return errorf(http.StatusConflict, fmt.Sprintf("team %q already exists", t.Name))
		}
		return fmt.Errorf("create team: %w", err)
	}
	writeJSON(w, http.StatusCreated, teamJSON{TeamID: t.ID, Name: t.Name, CreatedAt: t.CreatedAt})
	return nil
}

func (s *Server) adminListTeams(w http.ResponseWriter, r *http.Request) error {
	ts, err := s.store.ListTeams(r.Context())
	if err != nil {
		return fmt.Errorf("list teams: %w", err)
	}
	out := make([]teamJSON, 0, len(ts))
	for _, t := range ts {
		out = append(out, teamJSON{TeamID: t.ID, Name: t.Name, CreatedAt: t.CreatedAt.UTC()})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) adminTeam(r *http.Request) (store.Team, error) {
	id := r.PathValue("teamID")
	t, err := s.store.GetTeam(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		return t, errorf(http.StatusNotFound, fmt.Sprintf("team %q not found", id))
	}
	if err != nil {
		return t, fmt.Errorf("get team %s: %w", id, err)
	}
	return t, nil
}

// adminCreateKey creates an API key; its plaintext is in this reply only.
func (s *Server) adminCreateKey(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Name string `json:"name"`
	}
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	t, err := s.adminTeam(r)
	if err != nil {
		return err
	}
	key, hash, prefix := store.GenerateAPIKey()
	k := store.APIKey{ID: uuid.NewString(), TeamID: t.ID, Name: req.Name, Hash: hash, Prefix: prefix, CreatedAt: s.now().UTC()}
	if err := s.store.CreateAPIKey(r.Context(), k); err != nil {
		return fmt.Errorf("create api key: %w", err)
	}
	out := keyOut(k)
	out.Key = key
	writeJSON(w, http.StatusCreated, out)
	return nil
}

func (s *Server) adminListKeys(w http.ResponseWriter, r *http.Request) error {
	t, err := s.adminTeam(r)
	if err != nil {
		return err
	}
	ks, err := s.store.ListAPIKeys(r.Context(), t.ID)
	if err != nil {
		return fmt.Errorf("list api keys: %w", err)
	}
	out := make([]keyJSON, 0, len(ks))
	for _, k := range ks {
		out = append(out, keyOut(k))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) adminDeleteKey(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("keyID")
	// The store deletes by (team, id); the admin sees all teams, so find the team.
	teams, err := s.store.ListTeams(r.Context())
	if err != nil {
		return fmt.Errorf("list teams: %w", err)
	}
	for _, t := range teams {
		err := s.store.DeleteAPIKey(r.Context(), t.ID, id)
		if err == nil {
			noContent(w)
			return nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("delete api key %s: %w", id, err)
		}
	}
	return errorf(http.StatusNotFound, fmt.Sprintf("api key %q not found", id))
}
