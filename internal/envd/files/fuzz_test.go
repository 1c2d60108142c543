package files

import (
	"net/http"
	"net/url"
	"testing"
	"time"
)

// FuzzAuthorized feeds arbitrary /files queries and access headers to the
// check that guards envd's file up/download: no panic, and nothing passes
// without the token or a signature made with it.
func FuzzAuthorized(f *testing.F) {
	const token = "tok"
	valid := Sign("/etc/shadow", OpRead, "root", token, 0)
	for _, s := range [][3]string{
		{"GET", "path=/etc/shadow&username=root&signature=" + valid, ""},
		{"POST", "path=/x&signature=" + valid, ""},
		{"GET", "path=/x&signature=v1_&signature_expiration=-1", ""},
		{"GET", "path=%2e%2e%2fetc&username=&signature_expiration=99999999999999999999", "tok2"},
		{"GET", ";;&&==", ""},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, method, rawQuery, header string) {
		r := &http.Request{Method: method, URL: &url.URL{Path: "/files", RawQuery: rawQuery}, Header: http.Header{}}
		if header != "" {
			r.Header.Set("X-Access-Token", header)
		}
		err := Authorized(r, token, time.Unix(1700000000, 0))
		if err != nil || r.Header.Get("X-Access-Token") == token {
			return
		}
		q := r.URL.Query()
		if q.Get("signature") == "" {
			t.Fatalf("authorized without a token or signature: %q %q", rawQuery, header)
		}
	})
}
