package store

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"
)

func testEvents(t *testing.T, dsn string) {
	ctx := t.Context()
	s := open(t, dsn, WithSecretsKey(make([]byte, 32)))
	mustTeam(t, s, "ta")
	mustTeam(t, s, "tb")
	hook := Webhook{ID: "wh1", TeamID: "ta", Name: "n", URL: "http://x/", Enabled: true,
		Events: []string{EventCreated, EventKilled}, Secret: "s3cret", CreatedAt: ts(1)}
	if err := s.CreateWebhook(ctx, hook); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateWebhook(ctx, Webhook{ID: "wh2", TeamID: "ta", Enabled: false, Events: EventTypes, CreatedAt: ts(2)}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetWebhook(ctx, "ta", "wh1")
	if err != nil || got.Secret != "s3cret" || !slices.Equal(got.Events, hook.Events) {
		t.Fatalf("GetWebhook = %+v, %v", got, err)
	}
	if _, err := s.GetWebhook(ctx, "tb", "wh1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("another team's webhook: %v", err)
	}
	add := func(id, sb, typ string, sec int) {
		t.Helper()
		if err := s.AddEvent(ctx, SandboxEvent{ID: id, TeamID: "ta", SandboxID: sb, Type: typ, Timestamp: ts(sec),
			Data: json.RawMessage(`{"k":1}`)}); err != nil {
			t.Fatal(err)
		}
	}
	add("e1", "sb1", EventCreated, 10)
	add("e2", "sb1", EventPaused, 11) // wh1 does not take paused
	add("e3", "sb2", EventCreated, 12)
	add("e4", "sb1", EventKilled, 13)
	evs, err := s.ListEvents(ctx, EventFilter{TeamID: "ta", SandboxID: "sb1", Asc: true})
	if err != nil || len(evs) != 3 || evs[0].ID != "e1" || evs[2].ID != "e4" || string(evs[0].Data) != `{"k":1}` {
		t.Fatalf("ListEvents(sb1) = %+v, %v", evs, err)
	}
	if evs, _ := s.ListEvents(ctx, EventFilter{TeamID: "ta", Limit: 2}); len(evs) != 2 || evs[0].ID != "e4" {
		t.Errorf("newest first, limit 2: %+v", evs)
	}
	if evs, _ := s.ListEvents(ctx, EventFilter{TeamID: "ta", Types: []string{EventCreated}, Offset: 1, Asc: true}); len(evs) != 1 || evs[0].ID != "e3" {
		t.Errorf("types and offset: %+v", evs)
	}
	if evs, _ := s.ListEvents(ctx, EventFilter{TeamID: "tb"}); len(evs) != 0 {
		t.Errorf("another team's events: %+v", evs)
	}
	// Deliveries go out in order, one at a time per webhook: e1, e3, e4.
	var sent []string
	for range 4 {
		ds, err := s.PendingDeliveries(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 0 {
			break
		}
		if len(ds) != 1 || ds[0].Webhook.ID != "wh1" || ds[0].Webhook.Secret != "s3cret" {
			t.Fatalf("pending = %+v", ds)
		}
		d := ds[0]
		if err := s.ClaimDelivery(ctx, d, time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := s.ClaimDelivery(ctx, d, time.Now().Add(time.Minute)); !errors.Is(err, ErrConflict) {
			t.Errorf("second claim: %v", err)
		}
		if d.Event.ID == "e3" && d.Attempts == 0 {
			// A failed attempt keeps it first.
			if err := s.RetryDelivery(ctx, d.ID, 1, ts(100), "down"); err != nil {
				t.Fatal(err)
			}
			continue
		}
		sent = append(sent, d.Event.ID)
		if err := s.DeleteDelivery(ctx, d.ID); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(sent, []string{"e1", "e3", "e4"}) {
		t.Errorf("delivered %v, want e1 e3 e4", sent)
	}
	if err := s.DeleteWebhook(ctx, "ta", "wh1"); err != nil {
		t.Fatal(err)
	}
	if ws, _ := s.ListWebhooks(ctx, "ta"); len(ws) != 1 || ws[0].ID != "wh2" {
		t.Errorf("after delete: %+v", ws)
	}
}
