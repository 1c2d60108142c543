package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cocoon-run/cocoon/internal/envd/initreq"
)

// initWhenUp sends envd its /init as soon as envd accepts a connection,
// instead of polling /health first and then sending /init: one request to
// the guest fewer on every create and resume. /init is idempotent (the
// same token, clock, seed and variables applied again), so a request lost
// with its connection is simply sent again. It gives up after timeout or
// when the sandbox dies; an HTTP error answer from envd is final.
func (c *envdClient) initWhenUp(ctx context.Context, timeout time.Duration, died <-chan struct{}, r initreq.Request) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	delay := 2 * time.Millisecond
	for {
		// One attempt must not eat the whole deadline: a request lost while
		// the restored guest's network comes up would otherwise wait it out.
		actx, acancel := context.WithTimeout(ctx, initAttemptTimeout)
		err := initreq.Send(actx, c.http, c.base, c.token, r)
		acancel()
		var se *initreq.StatusError
		if err == nil || errors.As(err, &se) {
			return err
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("envd did not answer: %w (last error: %v)", ctx.Err(), last)
		case <-died:
			return errors.New("envd did not answer: the sandbox process exited")
		case <-time.After(delay):
		}
		if delay < 20*time.Millisecond {
			delay *= 2
		}
	}
}

// initAttemptTimeout bounds one /init request; envd answers it in
// milliseconds once its guest runs.
const initAttemptTimeout = 3 * time.Second
