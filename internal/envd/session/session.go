// Package session holds the identity envd is given by /init: environment
// variables, the access token, the default user and working directory. It is shared by every
// envd service and changes on every snapshot restore.
package session

import (
	"maps"
	"sync"
)

// Session is safe for concurrent use. The zero value is ready.
type Session struct {
	mu          sync.RWMutex
	envs        map[string]string
	token       string
	defaultUser string
	workdir     string
}

// Envs returns a copy of the environment variables set by /init.
func (s *Session) Envs() map[string]string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return maps.Clone(s.envs)
}

// MergeEnvs adds or replaces environment variables.
func (s *Session) MergeEnvs(envs map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.envs == nil {
		s.envs = make(map[string]string, len(envs))
	}
	maps.Copy(s.envs, envs)
}

// Token is the access token requests must carry ("" when none is set).
func (s *Session) Token() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.token
}

// SetToken replaces the access token.
func (s *Session) SetToken(t string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.token = t
}

// DefaultUser is the account requests run as unless they name one ("" means
// identity.DefaultUser).
func (s *Session) DefaultUser() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.defaultUser
}

// SetDefaultUser replaces the default account.
func (s *Session) SetDefaultUser(u string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.defaultUser = u
}

// DefaultWorkdir is where processes start when they name no directory (""
// means the user's home): a template's WORKDIR.
func (s *Session) DefaultWorkdir() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.workdir
}

// SetDefaultWorkdir replaces the default working directory.
func (s *Session) SetDefaultWorkdir(dir string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.workdir = dir
}
