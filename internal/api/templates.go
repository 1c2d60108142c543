package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/cocoon-run/cocoon/internal/store"
)

type templateJSON struct {
	TemplateID    string     `json:"templateID"`
	BuildID       string     `json:"buildID"`
	CPUCount      int        `json:"cpuCount"`
	MemoryMB      int        `json:"memoryMB"`
	DiskSizeMB    int        `json:"diskSizeMB"`
	Public        bool       `json:"public"`
	Aliases       []string   `json:"aliases"`
	Names         []string   `json:"names"`
	CreatedAt     time.Time  `json:"createdAt"`
	UpdatedAt     time.Time  `json:"updatedAt"`
	CreatedBy     *struct{}  `json:"createdBy"`
	LastSpawnedAt *time.Time `json:"lastSpawnedAt"`
	SpawnCount    int64      `json:"spawnCount"`
	BuildCount    int        `json:"buildCount"`
	EnvdVersion   string     `json:"envdVersion"`
	BuildStatus   string     `json:"buildStatus"`
}

type templateBuildJSON struct {
	BuildID     string     `json:"buildID"`
	Status      string     `json:"status"`
	CreatedAt   time.Time  `json:"createdAt"`
	UpdatedAt   time.Time  `json:"updatedAt"`
	FinishedAt  *time.Time `json:"finishedAt,omitempty"`
	CPUCount    int        `json:"cpuCount"`
	MemoryMB    int        `json:"memoryMB"`
	DiskSizeMB  int        `json:"diskSizeMB"`
	EnvdVersion string     `json:"envdVersion,omitempty"`
}

type templateWithBuildsJSON struct {
	TemplateID    string              `json:"templateID"`
	Public        bool                `json:"public"`
	Aliases       []string            `json:"aliases"`
	Names         []string            `json:"names"`
	CreatedAt     time.Time           `json:"createdAt"`
	UpdatedAt     time.Time           `json:"updatedAt"`
	LastSpawnedAt *time.Time          `json:"lastSpawnedAt"`
	SpawnCount    int64               `json:"spawnCount"`
	Builds        []templateBuildJSON `json:"builds"`
}

func names(t store.Template) []string {
	out := []string{}
	if t.Name != "" {
		out = append(out, t.Name)
	}
	for _, a := range t.Aliases {
		if a != t.Name {
			out = append(out, a)
		}
	}
	return out
}

// templateOut describes t with its latest build (builds are newest first or
// oldest first depending on the store; pick by time to be safe).
func templateOut(t store.Template, builds []store.TemplateBuild) templateJSON {
	out := templateJSON{
		TemplateID: t.ID, CPUCount: t.CPUCount, MemoryMB: t.MemoryMB, DiskSizeMB: t.DiskMB,
		Public: t.Public, Aliases: append([]string{}, t.Aliases...), Names: names(t),
		CreatedAt: t.CreatedAt.UTC(), UpdatedAt: t.CreatedAt.UTC(),
		BuildCount: len(builds), EnvdVersion: EnvdVersion, BuildStatus: string(store.BuildWaiting),
	}
	var latest, ready *store.TemplateBuild
	for i := range builds {
		b := &builds[i]
		if latest == nil || b.CreatedAt.After(latest.CreatedAt) {
			latest = b
		}
		if b.Status == store.BuildReady && (ready == nil || b.FinishedAt.After(ready.FinishedAt)) {
			ready = b
		}
	}
	if latest != nil {
		out.BuildStatus = string(latest.Status)
		out.UpdatedAt = maxTime(latest.CreatedAt, latest.FinishedAt).UTC()
	}
	if ready != nil {
		out.BuildID = ready.ID
	} else if latest != nil {
		out.BuildID = latest.ID
	}
	return out
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// visibleTemplates lists the team's templates plus the base template.
func (s *Server) visibleTemplates(ctx context.Context, team string) ([]store.Template, error) {
	ts, err := s.store.ListTemplates(ctx, team)
	if err != nil {
		return nil, fmt.Errorf("list templates: %w", err)
	}
	base, err := s.store.ResolveTemplate(ctx, s.cfg.BaseTemplate, team)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return nil, fmt.Errorf("resolve base template: %w", err)
	default:
		seen := false
		for _, t := range ts {
			seen = seen || t.ID == base.ID
		}
		if !seen {
			ts = append(ts, base)
		}
	}
	return ts, nil
}

func (s *Server) listTemplates(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	ts, err := s.visibleTemplates(ctx, principalFrom(ctx).teamID)
	if err != nil {
		return err
	}
	out := make([]templateJSON, 0, len(ts))
	for _, t := range ts {
		builds, err := s.store.ListBuilds(ctx, t.ID)
		if err != nil {
			return fmt.Errorf("list builds of %s: %w", t.ID, err)
		}
		out = append(out, templateOut(t, builds))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// resolveTemplate finds a template the team may use; others are 404.
func (s *Server) resolveTemplate(ctx context.Context, ref string) (store.Template, error) {
	t, err := s.store.ResolveTemplate(ctx, ref, principalFrom(ctx).teamID)
	if errors.Is(err, store.ErrNotFound) {
		return t, errorf(http.StatusNotFound, fmt.Sprintf("template %q not found", ref))
	}
	if err != nil {
		return t, fmt.Errorf("resolve template %s: %w", ref, err)
	}
	return t, nil
}

func (s *Server) getTemplate(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	t, err := s.resolveTemplate(ctx, r.PathValue("templateID"))
	if err != nil {
		return err
	}
	builds, err := s.store.ListBuilds(ctx, t.ID)
	if err != nil {
		return fmt.Errorf("list builds of %s: %w", t.ID, err)
	}
	out := templateWithBuildsJSON{
		TemplateID: t.ID, Public: t.Public, Aliases: append([]string{}, t.Aliases...), Names: names(t),
		CreatedAt: t.CreatedAt.UTC(), UpdatedAt: templateOut(t, builds).UpdatedAt, Builds: []templateBuildJSON{},
	}
	for _, b := range builds {
		bj := templateBuildJSON{
			BuildID: b.ID, Status: string(b.Status), CreatedAt: b.CreatedAt.UTC(),
			UpdatedAt: maxTime(b.CreatedAt, b.FinishedAt).UTC(),
			CPUCount:  t.CPUCount, MemoryMB: t.MemoryMB, DiskSizeMB: t.DiskMB, EnvdVersion: b.EnvdVersion,
		}
		if !b.FinishedAt.IsZero() {
			f := b.FinishedAt.UTC()
			bj.FinishedAt = &f
		}
		out.Builds = append(out.Builds, bj)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// deleteTemplate deletes a template of the caller's team. Public templates of
// other teams (and the base) are 404 to them, like any foreign resource.
func (s *Server) deleteTemplate(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	t, err := s.resolveTemplate(ctx, r.PathValue("templateID"))
	if err != nil {
		return err
	}
	if t.TeamID != principalFrom(ctx).teamID {
		return errorf(http.StatusNotFound, fmt.Sprintf("template %q not found", r.PathValue("templateID")))
	}
	if err := s.store.DeleteTemplate(ctx, t.ID); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return errorf(http.StatusNotFound, fmt.Sprintf("template %q not found", t.ID))
		}
		return fmt.Errorf("delete template %s: %w", t.ID, err)
	}
	noContent(w)
	return nil
}
