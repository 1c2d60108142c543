package api

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
)

// randomToken returns a URL-safe secret of nbytes random bytes from
// crypto/rand; sandbox access tokens are never derived from the ID.
func randomToken(nbytes int) (string, error) {
	b := make([]byte, nbytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("read random: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}
