package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// initWhenUp sends envd its /init as soon as envd accepts a connection,
// instead of polling /health first and then sending /init: one request to
// the guest fewer on every create and resume. /init is idempotent (the
// same token, clock, seed and variables applied again), so a request lost
// with its connection is simply sent again. It gives up after timeout or
// when the sandbox dies; an HTTP error answer from envd is final.
func (c *envdClient) initWhenUp(ctx context.Context, timeout time.Duration, died <-chan struct{}, r initRequest) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	delay := 2 * time.Millisecond
	for {
		// One attempt must not eat the whole deadline: a request lost while
		// the restored guest's network comes up would otherwise wait it out.
		actx, acancel := context.WithTimeout(ctx, initAttemptTimeout)
		err := c.init(actx, r)
		acancel()
		var he *envdHTTPError
		if err == nil || errors.As(err, &he) {
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

// envdHTTPError is an answer from envd with an error status.
type envdHTTPError struct{ msg string }

func (e *envdHTTPError) Error() string { return e.msg }
