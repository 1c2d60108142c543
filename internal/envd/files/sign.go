package files

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"time"
)

// Operations a signature grants.
const (
	OpRead  = "read"
	OpWrite = "write"
)

// Errors of Authorized.
var (
	ErrNoCredentials    = errors.New("missing access token or signature")
	ErrBadToken         = errors.New("invalid access token")
	ErrBadSignature     = errors.New("invalid signature")
	ErrExpiredSignature = errors.New("signature expired")
)

// Sign returns the signature granting op on path as user (the username the
// URL names, "" for the default) under token; expiration is unix seconds, 0
// for none. It is "v1_" + unpadded base64 of
// sha256("<path>:<op>:<user>:<token>[:<expiration>]"), as E2B's SDKs compute it.
func Sign(path, op, user, token string, expiration int64) string {
	s := path + ":" + op + ":" + user + ":" + token
	if expiration != 0 {
		s += ":" + strconv.FormatInt(expiration, 10)
	}
	sum := sha256.Sum256([]byte(s))
	return "v1_" + base64.RawStdEncoding.EncodeToString(sum[:])
}

// Authorized reports whether r may use /files when the session's token is
// token: no token means open; else a matching X-Access-Token, or a valid,
// unexpired signature of the path, operation and username.
func Authorized(r *http.Request, token string, now time.Time) error {
	if token == "" {
		return nil
	}
	if h := r.Header.Get("X-Access-Token"); h != "" {
		if subtle.ConstantTimeCompare([]byte(h), []byte(token)) != 1 {
			return ErrBadToken
		}
		return nil
	}
	q := r.URL.Query()
	sig := q.Get("signature")
	if sig == "" {
		return ErrNoCredentials
	}
	op := OpRead
	if r.Method == http.MethodPost {
		op = OpWrite
	}
	var exp int64
	if s := q.Get("signature_expiration"); s != "" {
		var err error
		if exp, err = strconv.ParseInt(s, 10, 64); err != nil {
			return ErrBadSignature
		}
	}
	want := Sign(q.Get("path"), op, q.Get("username"), token, exp)
	if subtle.ConstantTimeCompare([]byte(sig), []byte(want)) != 1 {
		return ErrBadSignature
	}
	if exp != 0 && exp < now.Unix() {
		return ErrExpiredSignature
	}
	return nil
}
