package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// Sandbox lifecycle event types, as E2B names them.
const (
	EventCreated = "sandbox.lifecycle.created"
	EventPaused  = "sandbox.lifecycle.paused"
	EventResumed = "sandbox.lifecycle.resumed"
	EventUpdated = "sandbox.lifecycle.updated"
	EventKilled  = "sandbox.lifecycle.killed"
)

// EventTypes lists every event type.
var EventTypes = []string{EventCreated, EventPaused, EventResumed, EventUpdated, EventKilled}

// SandboxEvent is one lifecycle event of a sandbox.
type SandboxEvent struct {
	ID         string
	TeamID     string
	SandboxID  string
	Type       string
	Timestamp  time.Time
	TemplateID string
	BuildID    string
	// ExecutionID names one run of the sandbox (it changes on resume).
	ExecutionID string
	// Data is E2B's eventData (JSON object; may be null).
	Data json.RawMessage
}

// EventFilter selects events: a team's, or one sandbox's of the team.
type EventFilter struct {
	TeamID    string
	SandboxID string // "" for every sandbox of the team
	Types     []string
	Offset    int
	Limit     int // 0: 10
	Asc       bool
}

// Webhook is a team's subscription to lifecycle events.
type Webhook struct {
	ID        string
	TeamID    string
	Name      string
	URL       string
	Enabled   bool
	Events    []string
	Secret    string
	CreatedAt time.Time
}

// Delivery is one event due to one webhook.
type Delivery struct {
	ID        string
	Webhook   Webhook
	Event     SandboxEvent
	Attempts  int
	NextAt    time.Time
	LastError string
}

// EventStore keeps lifecycle events, webhooks and their deliveries.
type EventStore interface {
	// AddEvent records ev and queues a delivery of it to every enabled
	// webhook of its team subscribed to its type, in one transaction.
	AddEvent(ctx context.Context, ev SandboxEvent) error
	// ListEvents returns a page of events, by (timestamp, ID).
	ListEvents(ctx context.Context, f EventFilter) ([]SandboxEvent, error)

	CreateWebhook(ctx context.Context, w Webhook) error
	// GetWebhook returns a webhook of team; ErrNotFound if none.
	GetWebhook(ctx context.Context, teamID, id string) (Webhook, error)
	ListWebhooks(ctx context.Context, teamID string) ([]Webhook, error)
	// UpdateWebhook writes name, URL, enabled, events and secret.
	UpdateWebhook(ctx context.Context, w Webhook) error
	// DeleteWebhook deletes a webhook and its pending deliveries.
	DeleteWebhook(ctx context.Context, teamID, id string) error

	// PendingDeliveries returns, for each webhook with deliveries queued,
	// its oldest one (by event time): a webhook's events go out in order,
	// the next only after the one before it.
	PendingDeliveries(ctx context.Context) ([]Delivery, error)
	// ClaimDelivery moves a delivery's next attempt from d.NextAt to
	// until, if no one moved it first (ErrConflict): one api of many
	// sends it.
	ClaimDelivery(ctx context.Context, d Delivery, until time.Time) error
	// RetryDelivery records a failed attempt and when to try again.
	RetryDelivery(ctx context.Context, id string, attempts int, next time.Time, lastErr string) error
	// DeleteDelivery removes a delivery that was sent or given up.
	DeleteDelivery(ctx context.Context, id string) error
}

const eventCols = "id, team_id, sandbox_id, type, ts, template_id, build_id, execution, data"

func scanEvent(sc scanner) (SandboxEvent, error) {
	var (
		e    SandboxEvent
		ts   int64
		data string
	)
	if err := sc.Scan(&e.ID, &e.TeamID, &e.SandboxID, &e.Type, &ts, &e.TemplateID, &e.BuildID, &e.ExecutionID, &data); err != nil {
		return e, err
	}
	e.Timestamp = fromMicros(ts)
	e.Data = textRaw(data)
	return e, nil
}

func (s *sqlStore) AddEvent(ctx context.Context, ev SandboxEvent) error {
	hooks, err := s.ListWebhooks(ctx, ev.TeamID)
	if err != nil {
		return fmt.Errorf("add event: %w", err)
	}
	data := rawText(ev.Data)
	if data == "" {
		data = "null"
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, s.q("INSERT INTO sandbox_events ("+eventCols+") VALUES ("+placeholders(9)+")"),
			ev.ID, ev.TeamID, ev.SandboxID, ev.Type, micros(ev.Timestamp), ev.TemplateID, ev.BuildID, ev.ExecutionID, data); err != nil {
			return fmt.Errorf("add event: %w", err)
		}
		for _, w := range hooks {
			if !w.Enabled || !slices.Contains(w.Events, ev.Type) {
				continue
			}
			if _, err := tx.ExecContext(ctx, s.q("INSERT INTO webhook_deliveries (id, webhook_id, event_id, ts, attempts, next_at, last_error) VALUES (?, ?, ?, ?, 0, ?, '')"),
				NewID(16), w.ID, ev.ID, micros(ev.Timestamp), micros(ev.Timestamp)); err != nil {
				return fmt.Errorf("queue delivery: %w", err)
			}
		}
		return nil
	})
}

func (s *sqlStore) ListEvents(ctx context.Context, f EventFilter) ([]SandboxEvent, error) {
	query := "SELECT " + eventCols + " FROM sandbox_events WHERE team_id = ?"
	args := []any{f.TeamID}
	if f.SandboxID != "" {
		query, args = query+" AND sandbox_id = ?", append(args, f.SandboxID)
	}
	if len(f.Types) > 0 {
		query += " AND type IN (" + placeholders(len(f.Types)) + ")"
		for _, t := range f.Types {
			args = append(args, t)
		}
	}
	order := " DESC"
	if f.Asc {
		order = " ASC"
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 10
	}
	query += " ORDER BY ts" + order + ", id" + order + " LIMIT ? OFFSET ?"
	args = append(args, limit, f.Offset)
	rows, err := s.db.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	defer rows.Close()
	out := []SandboxEvent{}
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return nil, fmt.Errorf("list events: %w", err)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

const webhookCols = "id, team_id, name, url, enabled, events, secret, created_at"

func (s *sqlStore) scanWebhook(sc scanner) (Webhook, error) {
	var (
		w       Webhook
		events  string
		created int64
	)
	if err := sc.Scan(&w.ID, &w.TeamID, &w.Name, &w.URL, &w.Enabled, &events, &w.Secret, &created); err != nil {
		return w, err
	}
	if err := json.Unmarshal([]byte(events), &w.Events); err != nil {
		return w, fmt.Errorf("webhook %s events: %w", w.ID, err)
	}
	var err error
	if w.Secret, err = s.unseal(w.Secret); err != nil {
		return w, fmt.Errorf("webhook %s secret: %w", w.ID, err)
	}
	w.CreatedAt = fromMicros(created)
	return w, nil
}

func (s *sqlStore) webhookArgs(w Webhook) (events, secret string, err error) {
	if events, err = listText(w.Events); err != nil {
		return "", "", err
	}
	secret, err = s.seal(w.Secret)
	return events, secret, err
}

func (s *sqlStore) CreateWebhook(ctx context.Context, w Webhook) error {
	events, secret, err := s.webhookArgs(w)
	if err != nil {
		return fmt.Errorf("create webhook: %w", err)
	}
	if _, err := s.db.ExecContext(ctx, s.q("INSERT INTO webhooks ("+webhookCols+") VALUES ("+placeholders(8)+")"),
		w.ID, w.TeamID, w.Name, w.URL, w.Enabled, events, secret, micros(w.CreatedAt)); err != nil {
		return fmt.Errorf("create webhook: %w", err)
	}
	return nil
}

func (s *sqlStore) GetWebhook(ctx context.Context, teamID, id string) (Webhook, error) {
	w, err := s.scanWebhook(s.db.QueryRowContext(ctx, s.q("SELECT "+webhookCols+" FROM webhooks WHERE id = ? AND team_id = ?"), id, teamID))
	if err == sql.ErrNoRows {
		return w, ErrNotFound
	}
	return w, err
}

func (s *sqlStore) ListWebhooks(ctx context.Context, teamID string) ([]Webhook, error) {
	rows, err := s.db.QueryContext(ctx, s.q("SELECT "+webhookCols+" FROM webhooks WHERE team_id = ? ORDER BY created_at, id"), teamID)
	if err != nil {
		return nil, fmt.Errorf("list webhooks: %w", err)
	}
	defer rows.Close()
	out := []Webhook{}
	for rows.Next() {
		w, err := s.scanWebhook(rows)
		if err != nil {
			return nil, fmt.Errorf("list webhooks: %w", err)
		}
		out = append(out, w)
	}
	return out, rows.Err()
}

func (s *sqlStore) UpdateWebhook(ctx context.Context, w Webhook) error {
	events, secret, err := s.webhookArgs(w)
	if err != nil {
		return fmt.Errorf("update webhook: %w", err)
	}
	return s.execOne(ctx, "UPDATE webhooks SET name = ?, url = ?, enabled = ?, events = ?, secret = ? WHERE id = ? AND team_id = ?",
		w.Name, w.URL, w.Enabled, events, secret, w.ID, w.TeamID)
}

func (s *sqlStore) DeleteWebhook(ctx context.Context, teamID, id string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if err := execAffecting(ctx, tx, ErrNotFound, s.q("DELETE FROM webhooks WHERE id = ? AND team_id = ?"), id, teamID); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, s.q("DELETE FROM webhook_deliveries WHERE webhook_id = ?"), id)
		return err
	})
}

func (s *sqlStore) PendingDeliveries(ctx context.Context) ([]Delivery, error) {
	// The oldest delivery of each webhook: its (ts, id) is the smallest.
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT d.id, d.attempts, d.next_at, d.last_error, d.webhook_id, d.event_id
		FROM webhook_deliveries d
		WHERE NOT EXISTS (SELECT 1 FROM webhook_deliveries o WHERE o.webhook_id = d.webhook_id AND (o.ts < d.ts OR (o.ts = d.ts AND o.id < d.id)))
		LIMIT 1000`))
	if err != nil {
		return nil, fmt.Errorf("pending deliveries: %w", err)
	}
	type row struct {
		d                Delivery
		webhook, eventID string
	}
	var rs []row
	for rows.Next() {
		var (
			r    row
			next int64
		)
		if err := rows.Scan(&r.d.ID, &r.d.Attempts, &next, &r.d.LastError, &r.webhook, &r.eventID); err != nil {
			rows.Close()
			return nil, fmt.Errorf("pending deliveries: %w", err)
		}
		r.d.NextAt = fromMicros(next)
		rs = append(rs, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pending deliveries: %w", err)
	}
	out := make([]Delivery, 0, len(rs))
	for _, r := range rs {
		w, err := s.scanWebhook(s.db.QueryRowContext(ctx, s.q("SELECT "+webhookCols+" FROM webhooks WHERE id = ?"), r.webhook))
		if err != nil {
			if err == sql.ErrNoRows {
				continue // deleted meanwhile
			}
			return nil, fmt.Errorf("pending deliveries: %w", err)
		}
		ev, err := scanEvent(s.db.QueryRowContext(ctx, s.q("SELECT "+eventCols+" FROM sandbox_events WHERE id = ?"), r.eventID))
		if err != nil {
			return nil, fmt.Errorf("pending deliveries: event %s: %w", r.eventID, err)
		}
		r.d.Webhook, r.d.Event = w, ev
		out = append(out, r.d)
	}
	return out, nil
}

func (s *sqlStore) ClaimDelivery(ctx context.Context, d Delivery, until time.Time) error {
	return execAffecting(ctx, s.db, ErrConflict, s.q("UPDATE webhook_deliveries SET next_at = ? WHERE id = ? AND next_at = ?"),
		micros(until), d.ID, micros(d.NextAt))
}

func (s *sqlStore) RetryDelivery(ctx context.Context, id string, attempts int, next time.Time, lastErr string) error {
	return s.execOne(ctx, "UPDATE webhook_deliveries SET attempts = ?, next_at = ?, last_error = ? WHERE id = ?",
		attempts, micros(next), lastErr, id)
}

func (s *sqlStore) DeleteDelivery(ctx context.Context, id string) error {
	_, err := s.db.ExecContext(ctx, s.q("DELETE FROM webhook_deliveries WHERE id = ?"), id)
	return err
}
