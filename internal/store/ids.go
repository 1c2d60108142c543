package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

const idAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

// NewID returns n random lowercase alphanumeric characters. IDs must not
// contain '-' since the SDK builds hosts as <port>-<id>.<domain>.
func NewID(n int) string {
	b := make([]byte, 0, n)
	var buf [64]byte
	for len(b) < n {
		rand.Read(buf[:])
		for _, c := range buf {
			// Rejecting bytes >= 252 (7*36) keeps the distribution uniform.
			if c < 252 && len(b) < n {
				b = append(b, idAlphabet[c%36])
			}
		}
	}
	return string(b)
}

// NewSandboxID returns a fresh sandbox ID (20 characters, ~103 bits).
// CreateSandbox rejects an ID ever used before with ErrConflict.
func NewSandboxID() string { return NewID(20) }

// APIKeyPrefix starts every generated API key, as E2B's keys do.
const APIKeyPrefix = "e2b_"

// GenerateAPIKey returns a new random key (APIKeyPrefix + 40 hex digits, 160
// bits), its hash for APIKey.Hash, and a short prefix for display.
func GenerateAPIKey() (key, hash, display string) {
	var b [20]byte
	rand.Read(b[:])
	key = APIKeyPrefix + hex.EncodeToString(b[:])
	return key, HashAPIKey(key), key[:len(APIKeyPrefix)+6]
}

// HashAPIKey returns the hex SHA-256 of a plaintext key. A fast hash is fine
// because keys are high-entropy random strings, not passwords: brute force is
// infeasible and lookups stay a single index probe.
func HashAPIKey(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:])
}

// Modify reads sandbox id, applies fn, and writes it back with UpdateSandbox,
// retrying when a concurrent writer wins. fn may be called several times and
// should only change the sandbox it is given; an error from fn aborts.
func Modify(ctx context.Context, s Store, id string, fn func(*Sandbox) error) (Sandbox, error) {
	const attempts = 10
	for range attempts {
		sb, err := s.GetSandbox(ctx, id)
		if err != nil {
			return Sandbox{}, err
		}
		if err := fn(&sb); err != nil {
			return Sandbox{}, err
		}
		err = s.UpdateSandbox(ctx, &sb)
		if err == nil {
			return sb, nil
		}
		if !errors.Is(err, ErrConflict) {
			return Sandbox{}, err
		}
	}
	return Sandbox{}, fmt.Errorf("modify sandbox %s: %w after %d attempts", id, ErrConflict, attempts)
}
