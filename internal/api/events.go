package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/cocoon-run/cocoon/internal/store"
)

// Lifecycle events and webhooks, following E2B's public API
// (e2b.dev/docs/sandbox/lifecycle-events-api and -webhooks): events are
// recorded in the store as each operation succeeds, served by
// /events/sandboxes, and queued in the store for each subscribed webhook
// (the outbox, kept across restarts). A background loop delivers them, a
// webhook's events in order, retrying with backoff; no sandbox operation
// waits for a delivery.

// eventJSON is an event as E2B serves and delivers it.
type eventJSON struct {
	Version            string          `json:"version"`
	ID                 string          `json:"id"`
	Type               string          `json:"type"`
	EventData          json.RawMessage `json:"eventData"`
	SandboxBuildID     string          `json:"sandboxBuildId"`
	SandboxExecutionID string          `json:"sandboxExecutionId"`
	SandboxID          string          `json:"sandboxId"`
	SandboxTeamID      string          `json:"sandboxTeamId"`
	SandboxTemplateID  string          `json:"sandboxTemplateId"`
	Timestamp          time.Time       `json:"timestamp"`
}

func eventOut(e store.SandboxEvent) eventJSON {
	data := e.Data
	if len(data) == 0 {
		data = json.RawMessage("null")
	}
	return eventJSON{Version: "v2", ID: e.ID, Type: e.Type, EventData: data, SandboxBuildID: e.BuildID,
		SandboxExecutionID: e.ExecutionID, SandboxID: e.SandboxID, SandboxTeamID: e.TeamID,
		SandboxTemplateID: e.TemplateID, Timestamp: e.Timestamp.UTC()}
}

// eventClock makes event times strictly increasing within this process,
// so that (time, id) orders a sandbox's events as they happened.
type eventClock struct {
	mu   sync.Mutex
	last time.Time
}

func (c *eventClock) next(now time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	now = now.Truncate(time.Microsecond) // the store's resolution
	if !now.After(c.last) {
		now = c.last.Add(time.Microsecond)
	}
	c.last = now
	return now
}

// emit records a lifecycle event of sb (best effort: a failure is logged,
// the operation it follows has succeeded) and wakes the deliverer. reason
// is a kill's.
func (s *Server) emit(ctx context.Context, sb store.Sandbox, typ, reason string) {
	now := s.clock.next(s.now())
	data := map[string]any{"sandbox_metadata": sb.Metadata}
	if typ == store.EventKilled || typ == store.EventPaused {
		data["execution"] = map[string]any{
			"started_at": sb.StartedAt.UTC().Format(time.RFC3339), "vcpu_count": sb.CPUCount, "memory_mb": sb.MemoryMB,
			"execution_time": now.Sub(sb.StartedAt).Milliseconds(),
		}
	}
	if reason != "" {
		data["reason"] = reason
	}
	b, _ := json.Marshal(data)
	ev := store.SandboxEvent{ID: store.NewID(16), TeamID: sb.TeamID, SandboxID: sb.ID, Type: typ, Timestamp: now,
		TemplateID: sb.TemplateID, BuildID: sb.BuildID, ExecutionID: sb.ID + "-" + strconv.FormatInt(sb.StartedAt.UnixMicro(), 36), Data: b}
	if err := s.store.AddEvent(context.WithoutCancel(ctx), ev); err != nil {
		s.logger.WarnContext(ctx, "record lifecycle event", "sandbox", sb.ID, "type", typ, "err", err)
		return
	}
	s.cfg.Metrics.Event(typ)
	s.wakeDeliverer()
}

func (s *Server) wakeDeliverer() {
	select {
	case s.deliver <- struct{}{}:
	default:
	}
}

func (s *Server) listEvents(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := store.EventFilter{TeamID: principalFrom(r.Context()).teamID, Types: q["types"], Limit: 10}
	if id := r.PathValue("sandboxID"); id != "" {
		sb, err := s.store.GetSandbox(r.Context(), id)
		if err != nil || sb.TeamID != f.TeamID {
			return notFound(id)
		}
		f.SandboxID = id
	}
	if v, err := intParam(r, "offset"); err != nil {
		return err
	} else {
		f.Offset = int(v)
	}
	if v, err := intParam(r, "limit"); err != nil {
		return err
	} else if v > 0 {
		f.Limit = int(min(v, 100))
	}
	f.Asc = q.Get("orderAsc") == "true"
	evs, err := s.store.ListEvents(r.Context(), f)
	if err != nil {
		return err
	}
	out := make([]eventJSON, 0, len(evs))
	for _, e := range evs {
		out = append(out, eventOut(e))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

type webhookJSON struct {
	ID        string    `json:"id"`
	TeamID    string    `json:"teamID"`
	Name      string    `json:"name"`
	URL       string    `json:"url"`
	Enabled   bool      `json:"enabled"`
	Events    []string  `json:"events"`
	CreatedAt time.Time `json:"createdAt"`
}

func webhookOut(h store.Webhook) webhookJSON {
	return webhookJSON{ID: h.ID, TeamID: h.TeamID, Name: h.Name, URL: h.URL, Enabled: h.Enabled, Events: h.Events, CreatedAt: h.CreatedAt.UTC()}
}

type webhookRequest struct {
	Name            *string   `json:"name"`
	URL             *string   `json:"url"`
	Enabled         *bool     `json:"enabled"`
	Events          *[]string `json:"events"`
	SignatureSecret *string   `json:"signatureSecret"`
}

// apply writes the fields of req onto h and checks the result.
func (req webhookRequest) apply(h *store.Webhook) error {
	if req.Name != nil {
		h.Name = *req.Name
	}
	if req.URL != nil {
		h.URL = *req.URL
	}
	if req.Enabled != nil {
		h.Enabled = *req.Enabled
	}
	if req.Events != nil {
		h.Events = *req.Events
	}
	if req.SignatureSecret != nil {
		h.Secret = *req.SignatureSecret
	}
	u, err := url.Parse(h.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errorf(http.StatusBadRequest, "url must be an http or https URL")
	}
	for _, e := range h.Events {
		if !slices.Contains(store.EventTypes, e) {
			return errorf(http.StatusBadRequest, "unknown event type "+strconv.Quote(e))
		}
	}
	if h.Secret == "" {
		return errorf(http.StatusBadRequest, "signatureSecret is required")
	}
	return nil
}

func (s *Server) createWebhook(w http.ResponseWriter, r *http.Request) error {
	var req webhookRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	h := store.Webhook{ID: store.NewID(16), TeamID: principalFrom(r.Context()).teamID, Enabled: true,
		Events: store.EventTypes, CreatedAt: s.now()}
	if err := req.apply(&h); err != nil {
		return err
	}
	if err := s.store.CreateWebhook(r.Context(), h); err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, webhookOut(h))
	return nil
}

func (s *Server) listWebhooks(w http.ResponseWriter, r *http.Request) error {
	hs, err := s.store.ListWebhooks(r.Context(), principalFrom(r.Context()).teamID)
	if err != nil {
		return err
	}
	out := make([]webhookJSON, 0, len(hs))
	for _, h := range hs {
		out = append(out, webhookOut(h))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) webhook(r *http.Request) (store.Webhook, error) {
	id := r.PathValue("webhookID")
	h, err := s.store.GetWebhook(r.Context(), principalFrom(r.Context()).teamID, id)
	if errors.Is(err, store.ErrNotFound) {
		return h, errorf(http.StatusNotFound, fmt.Sprintf("webhook %q not found", id))
	}
	return h, err
}

func (s *Server) getWebhook(w http.ResponseWriter, r *http.Request) error {
	h, err := s.webhook(r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, webhookOut(h))
	return nil
}

func (s *Server) updateWebhook(w http.ResponseWriter, r *http.Request) error {
	var req webhookRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	h, err := s.webhook(r)
	if err != nil {
		return err
	}
	if err := req.apply(&h); err != nil {
		return err
	}
	if err := s.store.UpdateWebhook(r.Context(), h); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, webhookOut(h))
	return nil
}

func (s *Server) deleteWebhook(w http.ResponseWriter, r *http.Request) error {
	h, err := s.webhook(r)
	if err != nil {
		return err
	}
	if err := s.store.DeleteWebhook(r.Context(), h.TeamID, h.ID); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{})
	return nil
}

// Signature is E2B's webhook signature of body: the unpadded base64 of
// SHA-256(secret ‖ body), sent as e2b-signature (version v1).
func Signature(secret string, body []byte) string {
	h := sha256.New()
	h.Write([]byte(secret))
	h.Write(body)
	return base64.RawStdEncoding.EncodeToString(h.Sum(nil))
}

// deliverLoop sends queued webhook deliveries until ctx ends: at every
// wake-up (an event, a finished delivery) and every WebhookPoll.
func (s *Server) deliverLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.WebhookPoll)
	defer t.Stop()
	var (
		mu       sync.Mutex
		inflight = map[string]bool{} // webhooks with a send in progress
		wg       sync.WaitGroup
	)
	defer wg.Wait()
	for {
		ds, err := s.store.PendingDeliveries(ctx)
		if err != nil && ctx.Err() == nil {
			s.logger.WarnContext(ctx, "webhook deliveries", "err", err)
		}
		now := s.now()
		for _, d := range ds {
			mu.Lock()
			busy := inflight[d.Webhook.ID]
			mu.Unlock()
			if busy || d.NextAt.After(now) {
				continue
			}
			// A lease: another api (or this one after a crash) retries
			// it after the attempt's time is up.
			if err := s.store.ClaimDelivery(ctx, d, now.Add(s.cfg.WebhookTimeout+5*time.Second)); err != nil {
				continue
			}
			mu.Lock()
			inflight[d.Webhook.ID] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.deliverOne(ctx, d)
				mu.Lock()
				delete(inflight, d.Webhook.ID)
				mu.Unlock()
				s.wakeDeliverer()
			}()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.deliver:
		}
	}
}

// deliverOne makes one attempt at d and records its outcome.
func (s *Server) deliverOne(ctx context.Context, d store.Delivery) {
	body, _ := json.Marshal(eventOut(d.Event))
	attempt := d.Attempts + 1
	err := s.post(ctx, d, attempt, body)
	s.cfg.Metrics.Webhook(err)
	ctx = context.WithoutCancel(ctx)
	if err == nil {
		if err := s.store.DeleteDelivery(ctx, d.ID); err != nil {
			s.logger.WarnContext(ctx, "webhook delivered, not recorded (it will be sent again)", "webhook", d.Webhook.ID, "err", err)
		}
		return
	}
	if attempt >= s.cfg.WebhookMaxAttempts {
		s.logger.WarnContext(ctx, "webhook delivery given up", "webhook", d.Webhook.ID, "event", d.Event.ID, "attempts", attempt, "err", err)
		_ = s.store.DeleteDelivery(ctx, d.ID)
		return
	}
	// Exponential backoff from WebhookBackoff, capped at 5 minutes.
	wait := min(s.cfg.WebhookBackoff<<min(attempt-1, 20), 5*time.Minute)
	if rerr := s.store.RetryDelivery(ctx, d.ID, attempt, s.now().Add(wait), err.Error()); rerr != nil {
		s.logger.WarnContext(ctx, "record webhook retry", "webhook", d.Webhook.ID, "err", rerr)
	}
	s.logger.InfoContext(ctx, "webhook delivery failed; will retry", "webhook", d.Webhook.ID, "event", d.Event.ID, "attempt", attempt, "in", wait, "err", err)
}

func (s *Server) post(ctx context.Context, d store.Delivery, attempt int, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.WebhookTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.Webhook.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("e2b-webhook-id", d.Webhook.ID)
	req.Header.Set("e2b-delivery-id", d.ID+"-"+strconv.Itoa(attempt))
	req.Header.Set("e2b-signature-version", "v1")
	req.Header.Set("e2b-signature", Signature(d.Webhook.Secret, body))
	resp, err := s.webhookHTTP.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("receiver answered %s", resp.Status)
	}
	return nil
}
