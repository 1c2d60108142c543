package store

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Secrets at rest (issue 18): a sandbox's envd access token, traffic
// access token and environment variables are stored encrypted with
// AES-256-GCM when the store has a key, so that a copied database alone
// reveals none of them. The server needs their values back (it talks to
// envd with the token and returns both tokens on connect), so they are
// encrypted, not hashed. API keys stay hashed: nothing needs them back.

// sealedPrefix marks an encrypted column value: "enc1:" + base64(nonce ‖
// ciphertext). Values without it are plaintext (rows written before the
// store had a key), read as they are and sealed at Open.
const sealedPrefix = "enc1:"

// KeySize is the size of the secrets key in bytes.
const KeySize = 32

// Option configures Open.
type Option func(*sqlStore) error

// WithSecretsKey makes the store encrypt secret columns with key (KeySize
// bytes, see LoadOrCreateKey).
func WithSecretsKey(key []byte) Option {
	return func(s *sqlStore) error {
		if len(key) != KeySize {
			return fmt.Errorf("secrets key: %d bytes, want %d", len(key), KeySize)
		}
		block, err := aes.NewCipher(key)
		if err != nil {
			return err
		}
		s.aead, err = cipher.NewGCM(block)
		return err
	}
}

// LoadOrCreateKey reads the secrets key at path (KeySize raw bytes),
// creating a random one (mode 0600) when the file does not exist. Every
// process that opens the same database needs the same key.
func LoadOrCreateKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	switch {
	case err == nil && len(b) == KeySize:
		return b, nil
	case err == nil:
		return nil, fmt.Errorf("secrets key %s: %d bytes, want %d", path, len(b), KeySize)
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("secrets key: %w", err)
	}
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("secrets key: %w", err)
	}
	_, err = f.Write(key)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("secrets key: %w", err)
	}
	return key, nil
}

// seal encrypts v when the store has a key ("" stays "").
func (s *sqlStore) seal(v string) (string, error) {
	if s.aead == nil || v == "" {
		return v, nil
	}
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(v)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	return sealedPrefix + base64.RawStdEncoding.EncodeToString(s.aead.Seal(nonce, nonce, []byte(v), nil)), nil
}

// unseal decrypts a sealed value; plaintext passes through.
func (s *sqlStore) unseal(v string) (string, error) {
	rest, ok := strings.CutPrefix(v, sealedPrefix)
	if !ok {
		return v, nil
	}
	if s.aead == nil {
		return "", errors.New("encrypted value and no secrets key (pass the data dir's secrets.key)")
	}
	b, err := base64.RawStdEncoding.DecodeString(rest)
	if err != nil || len(b) < s.aead.NonceSize() {
		return "", errors.New("corrupt encrypted value")
	}
	out, err := s.aead.Open(nil, b[:s.aead.NonceSize()], b[s.aead.NonceSize():], nil)
	if err != nil {
		return "", errors.New("encrypted value does not open with this secrets key")
	}
	return string(out), nil
}

// sealPlaintext encrypts the secret columns of rows written before the
// store had a key. It does nothing without a key.
func (s *sqlStore) sealPlaintext(ctx context.Context) error {
	if s.aead == nil {
		return nil
	}
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT id, env_vars, envd_access_token, traffic_access_token FROM sandboxes
		WHERE env_vars NOT LIKE 'enc1:%' OR (envd_access_token <> '' AND envd_access_token NOT LIKE 'enc1:%')
		OR (traffic_access_token <> '' AND traffic_access_token NOT LIKE 'enc1:%')`))
	if err != nil {
		return fmt.Errorf("seal secrets: %w", err)
	}
	type row struct{ id, ev, envd, traffic string }
	var todo []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.id, &r.ev, &r.envd, &r.traffic); err != nil {
			rows.Close()
			return fmt.Errorf("seal secrets: %w", err)
		}
		todo = append(todo, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("seal secrets: %w", err)
	}
	for _, r := range todo {
		vals := []string{r.ev, r.envd, r.traffic}
		for i, v := range vals {
			if strings.HasPrefix(v, sealedPrefix) {
				continue
			}
			if vals[i], err = s.seal(v); err != nil {
				return err
			}
		}
		// Only where the row still holds what was read: a concurrent writer wins.
		_, err := s.db.ExecContext(ctx, s.q(`UPDATE sandboxes SET env_vars = ?, envd_access_token = ?, traffic_access_token = ?
			WHERE id = ? AND env_vars = ? AND envd_access_token = ? AND traffic_access_token = ?`),
			vals[0], vals[1], vals[2], r.id, r.ev, r.envd, r.traffic)
		if err != nil {
			return fmt.Errorf("seal secrets of sandbox %s: %w", r.id, err)
		}
	}
	return nil
}
