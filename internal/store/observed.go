package store

import (
	"context"
	"errors"
	"time"
)

// Observer is told of each store call: its method, when it started and its
// error (ErrNotFound and ErrConflict count as answers, not errors).
type Observer func(method string, start time.Time, err error)

// Observed returns st with the calls of the request paths (sandbox reads and
// writes, key lookups, template resolution, metrics samples) reported to
// obs. Other methods pass through unobserved.
func Observed(st Store, obs Observer) Store {
	if obs == nil {
		return st
	}
	return &observed{Store: st, obs: obs}
}

type observed struct {
	Store
	obs Observer
}

func (o *observed) done(method string, start time.Time, err error) {
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrConflict) {
		err = nil
	}
	o.obs(method, start, err)
}

func (o *observed) APIKeyByHash(ctx context.Context, hash string) (APIKey, error) {
	t := time.Now()
	k, err := o.Store.APIKeyByHash(ctx, hash)
	o.done("APIKeyByHash", t, err)
	return k, err
}

func (o *observed) TouchAPIKey(ctx context.Context, id string, at time.Time) error {
	t := time.Now()
	err := o.Store.TouchAPIKey(ctx, id, at)
	o.done("TouchAPIKey", t, err)
	return err
}

func (o *observed) CreateSandbox(ctx context.Context, sb *Sandbox) error {
	t := time.Now()
	err := o.Store.CreateSandbox(ctx, sb)
	o.done("CreateSandbox", t, err)
	return err
}

func (o *observed) GetSandbox(ctx context.Context, id string) (Sandbox, error) {
	t := time.Now()
	sb, err := o.Store.GetSandbox(ctx, id)
	o.done("GetSandbox", t, err)
	return sb, err
}

func (o *observed) UpdateSandbox(ctx context.Context, sb *Sandbox) error {
	t := time.Now()
	err := o.Store.UpdateSandbox(ctx, sb)
	o.done("UpdateSandbox", t, err)
	return err
}

func (o *observed) SetSandboxState(ctx context.Context, id string, from []SandboxState, to SandboxState, reason string) (Sandbox, error) {
	t := time.Now()
	sb, err := o.Store.SetSandboxState(ctx, id, from, to, reason)
	o.done("SetSandboxState", t, err)
	return sb, err
}

func (o *observed) ListSandboxes(ctx context.Context, f SandboxFilter) ([]Sandbox, string, error) {
	t := time.Now()
	page, next, err := o.Store.ListSandboxes(ctx, f)
	o.done("ListSandboxes", t, err)
	return page, next, err
}

func (o *observed) ListExpired(ctx context.Context, now time.Time) ([]Sandbox, error) {
	t := time.Now()
	out, err := o.Store.ListExpired(ctx, now)
	o.done("ListExpired", t, err)
	return out, err
}

func (o *observed) LatestReadyBuild(ctx context.Context, ref, teamID string) (Template, TemplateBuild, error) {
	t := time.Now()
	tpl, b, err := o.Store.LatestReadyBuild(ctx, ref, teamID)
	o.done("LatestReadyBuild", t, err)
	return tpl, b, err
}

func (o *observed) InsertMetrics(ctx context.Context, ms ...Metric) error {
	t := time.Now()
	err := o.Store.InsertMetrics(ctx, ms...)
	o.done("InsertMetrics", t, err)
	return err
}

func (o *observed) Heartbeat(ctx context.Context, n Node) (Node, error) {
	t := time.Now()
	out, err := o.Store.Heartbeat(ctx, n)
	o.done("Heartbeat", t, err)
	return out, err
}
