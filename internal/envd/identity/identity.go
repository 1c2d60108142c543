// Package identity resolves the Unix account an envd request acts as: the
// user named by the caller's Basic auth, else the default user ("user" when
// that account exists, else the account envd runs as).
package identity

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultUser is the account requests run as unless they name another.
const DefaultUser = "user"

// User is a resolved account.
type User struct {
	Name string
	UID  uint32
	GID  uint32
	Home string
}

// Lookup resolves an account by name.
func Lookup(name string) (*User, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("look up user %q: %w", name, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parse uid of %q: %w", name, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parse gid of %q: %w", name, err)
	}
	return &User{Name: u.Username, UID: uint32(uid), GID: uint32(gid), Home: u.HomeDir}, nil
}

// Current is the account envd itself runs as.
func Current() (*User, error) {
	u, err := user.Current()
	if err != nil {
		return nil, fmt.Errorf("look up current user: %w", err)
	}
	return Lookup(u.Username)
}

// Default returns the account named def (or DefaultUser when def is empty)
// when it exists, else the current account.
func Default(def string) (*User, error) {
	if def == "" {
		def = DefaultUser
	}
	if u, err := Lookup(def); err == nil {
		return u, nil
	}
	return Current()
}

// SetBasicAuth makes h name user as the account a request acts as, the
// way the SDK does: `Authorization: Basic base64("<user>:")`.
func SetBasicAuth(h http.Header, user string) {
	h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":")))
}

// FromBasicAuth extracts the user name of an `Authorization: Basic
// base64("<user>:")` header; ok is false when there is none.
func FromBasicAuth(h http.Header) (name string, ok bool, err error) {
	v := h.Get("Authorization")
	if v == "" {
		return "", false, nil
	}
	enc, found := strings.CutPrefix(v, "Basic ")
	if !found {
		return "", false, nil
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc))
	if err != nil {
		return "", false, fmt.Errorf("decode basic auth: %w", err)
	}
	name, _, _ = strings.Cut(string(raw), ":")
	if name == "" {
		return "", false, nil
	}
	return name, true, nil
}

// Resolve returns the account a request acts as: the Basic-auth user, the
// explicit name (e.g. a `username` query parameter), or the default.
func Resolve(h http.Header, explicit, def string) (*User, error) {
	if explicit != "" {
		return Lookup(explicit)
	}
	name, ok, err := FromBasicAuth(h)
	if err != nil {
		return nil, err
	}
	if ok {
		return Lookup(name)
	}
	return Default(def)
}

// Abs resolves p against the user's home directory when it is relative.
func (u *User) Abs(p string) string {
	if p == "" {
		return u.Home
	}
	if strings.HasPrefix(p, "~/") {
		p = filepath.Join(u.Home, p[2:])
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(u.Home, p)
	}
	return filepath.Clean(p)
}

// GroupIDs lists the account's supplementary groups, for switching to it.
// Without an entry in the group database it gets its primary group only,
// which grants less, never more.
func (u *User) GroupIDs() ([]uint32, error) {
	// GroupIds needs only the name and primary group, both already known:
	// no second passwd lookup.
	acct := &user.User{Username: u.Name, Uid: strconv.FormatUint(uint64(u.UID), 10), Gid: strconv.FormatUint(uint64(u.GID), 10), HomeDir: u.Home}
	ids, err := acct.GroupIds()
	if err != nil {
		return []uint32{u.GID}, nil
	}
	out := make([]uint32, 0, len(ids))
	for _, id := range ids {
		g, err := strconv.ParseUint(id, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("parse group id %q of %q: %w", id, u.Name, err)
		}
		out = append(out, uint32(g))
	}
	return out, nil
}
