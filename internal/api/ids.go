package api

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
)

const idAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

// randomID returns n characters from [a-z0-9] drawn with crypto/rand. Sandbox
// IDs use it: they appear in host names (<port>-<id>.<domain>), so no '-'
// and no upper case.
func randomID(n int) (string, error) {
	// Rejection sampling keeps the distribution uniform: 252 = 7*36.
	out := make([]byte, 0, n)
	buf := make([]byte, n+n/2)
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			return "", fmt.Errorf("read random: %w", err)
		}
		for _, b := range buf {
			if b >= 252 {
				continue
			}
			out = append(out, idAlphabet[int(b)%len(idAlphabet)])
			if len(out) == n {
				break
			}
		}
	}
	return string(out), nil
}

// randomToken returns a URL-safe secret of nbytes random bytes.
func randomToken(nbytes int) (string, error) {
	b := make([]byte, nbytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("read random: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}
