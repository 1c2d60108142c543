package runtime

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// WarmInit sends a pooled sandbox's envd (at base, e.g. "http://ip:49983")
// an /init that changes nothing a create relies on (the host's clock and
// fresh entropy, no token, no variables), so that the code of /init has
// run once before a create sends the real one. Under emulation (TCG) the
// first run of a code path in a restored guest costs ≈ 10× a later one.
func WarmInit(ctx context.Context, c *http.Client, base string) error {
	seed := make([]byte, 32)
	_, _ = rand.Read(seed)
	body, err := json.Marshal(map[string]any{
		"timestamp": time.Now().UTC().Format(time.RFC3339Nano),
		"seed":      seed,
	})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/init", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("warm-up /init: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("warm-up /init: %s", resp.Status)
	}
	return nil
}
