package files

import (
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"
)

func TestSignKnownValue(t *testing.T) {
	// Expected values computed with the JS SDK's recipe:
	// "v1_" + btoa(sha256(raw)).replace(/=+$/, "").
	tests := []struct {
		path, op, user, token string
		exp                   int64
		want                  string
	}{
		{"/a", OpRead, "", "tok", 0, "v1_2/gNbgFPxFSqkheS/SD0NHlzA121E/nxkOtc/ovxeoI"},
		{"/a", OpRead, "", "tok", 1700000060, "v1_i7bpRxMZTWA4NLBD3uZVnHl3P0Xhy52WFoH92tN66TE"},
	}
	for _, tt := range tests {
		if got := Sign(tt.path, tt.op, tt.user, tt.token, tt.exp); got != tt.want {
			t.Errorf("Sign(%q, %q, %q, %q, %d) = %q, want %q", tt.path, tt.op, tt.user, tt.token, tt.exp, got, tt.want)
		}
	}
}

func TestAuthorized(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	const token = "secret"
	future, past := now.Unix()+60, now.Unix()-1
	tests := []struct {
		name   string
		token  string
		method string
		query  url.Values
		header string
		want   error
	}{
		{"no token set", "", "GET", url.Values{"path": {"/a"}}, "", nil},
		{"header token", token, "GET", url.Values{"path": {"/a"}}, token, nil},
		{"wrong header token", token, "GET", url.Values{"path": {"/a"}}, "nope", ErrBadToken},
		{"nothing", token, "GET", url.Values{"path": {"/a"}}, "", ErrNoCredentials},
		{"read signature", token, "GET", url.Values{"path": {"/a"}, "signature": {Sign("/a", OpRead, "", token, 0)}}, "", nil},
		{"write signature", token, "POST", url.Values{"path": {"/a"}, "signature": {Sign("/a", OpWrite, "", token, 0)}}, "", nil},
		{"read signature used to write", token, "POST", url.Values{"path": {"/a"}, "signature": {Sign("/a", OpRead, "", token, 0)}}, "", ErrBadSignature},
		{"other path", token, "GET", url.Values{"path": {"/b"}, "signature": {Sign("/a", OpRead, "", token, 0)}}, "", ErrBadSignature},
		{"with user", token, "GET", url.Values{"path": {"/a"}, "username": {"root"}, "signature": {Sign("/a", OpRead, "root", token, 0)}}, "", nil},
		{"user swapped", token, "GET", url.Values{"path": {"/a"}, "username": {"root"}, "signature": {Sign("/a", OpRead, "", token, 0)}}, "", ErrBadSignature},
		{"old token", token, "GET", url.Values{"path": {"/a"}, "signature": {Sign("/a", OpRead, "", "old", 0)}}, "", ErrBadSignature},
		{"unexpired", token, "GET", url.Values{"path": {"/a"}, "signature": {Sign("/a", OpRead, "", token, future)}, "signature_expiration": {strconv.FormatInt(future, 10)}}, "", nil},
		{"expired", token, "GET", url.Values{"path": {"/a"}, "signature": {Sign("/a", OpRead, "", token, past)}, "signature_expiration": {strconv.FormatInt(past, 10)}}, "", ErrExpiredSignature},
		{"expiration stripped", token, "GET", url.Values{"path": {"/a"}, "signature": {Sign("/a", OpRead, "", token, past)}}, "", ErrBadSignature},
		{"expiration extended", token, "GET", url.Values{"path": {"/a"}, "signature": {Sign("/a", OpRead, "", token, past)}, "signature_expiration": {strconv.FormatInt(future, 10)}}, "", ErrBadSignature},
		{"bad expiration", token, "GET", url.Values{"path": {"/a"}, "signature": {"v1_x"}, "signature_expiration": {"soon"}}, "", ErrBadSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := http.NewRequest(tt.method, "http://envd/files?"+tt.query.Encode(), nil)
			if tt.header != "" {
				r.Header.Set("X-Access-Token", tt.header)
			}
			if got := Authorized(r, tt.token, now); !errors.Is(got, tt.want) {
				t.Errorf("Authorized = %v, want %v", got, tt.want)
			}
		})
	}
}
