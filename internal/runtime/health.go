package runtime

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// WaitHealth polls envd's GET /health at base (e.g. "http://ip:49983")
// every interval until it answers 2xx, the sandbox's process exits (done;
// nil when not watched) or ctx ends.
func WaitHealth(ctx context.Context, c *http.Client, base string, interval time.Duration, done <-chan struct{}) error {
	url := base + "/health"
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("envd health: %w", err)
		}
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for envd at %s: %w (last: %v)", url, ctx.Err(), err)
		case <-done:
			return errors.New("wait for envd: the sandbox process exited")
		case <-time.After(interval):
		}
	}
}
