package orchestrator

import (
	"context"
	"time"
)

// spans times the steps of a create for the debug log ("sandbox started"
// with one duration per step), so that where a create spends its time can
// be read off a running server started with --debug.
type spans struct {
	start, last time.Time
	steps       []any
}

func newSpans() *spans {
	now := time.Now()
	return &spans{start: now, last: now}
}

// mark ends the step called name.
func (s *spans) mark(name string) {
	now := time.Now()
	s.steps = append(s.steps, name, now.Sub(s.last).Round(10*time.Microsecond))
	s.last = now
}

// attrs are the steps plus the total, as slog key-value pairs.
func (s *spans) attrs() []any {
	return append(s.steps, "total", time.Since(s.start).Round(10*time.Microsecond))
}

// slotPrewarmer is implemented by *network.Manager.
type slotPrewarmer interface {
	Prewarm(ctx context.Context, n int) error
}

// SlotPoolTarget is how many warm network slots the orchestrator keeps
// ready after acquires (the manager caps it at its pool size).
var SlotPoolTarget = 4

// refillSlots tops the network slot pool up in the background after an
// acquire, with at most one refill running at a time.
func (o *Orchestrator) refillSlots() {
	p, ok := o.cfg.Slots.(slotPrewarmer)
	if !ok || !o.refilling.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer o.refilling.Store(false)
		if err := p.Prewarm(context.Background(), SlotPoolTarget); err != nil {
			o.log.Debug("refill network slots", "err", err)
		}
	}()
}
