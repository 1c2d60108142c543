package process

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/cocoon-run/cocoon/internal/envd/identity"
)

// DefaultPath is PATH for processes whose session and request set none.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// buildEnv returns the environment of a process: the account's basics,
// overridden by the session's variables, overridden by the request's.
func buildEnv(u *identity.User, cwd string, sess, req map[string]string) []string {
	env := map[string]string{
		"PATH":    DefaultPath,
		"HOME":    u.Home,
		"USER":    u.Name,
		"LOGNAME": u.Name,
		"PWD":     cwd,
	}
	maps.Copy(env, sess)
	maps.Copy(env, req)
	out := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	return out
}

// lookPath finds cmd in the PATH of the process's environment (not envd's).
func lookPath(cmd string, env []string) (string, error) {
	if strings.Contains(cmd, "/") {
		return cmd, nil
	}
	var path string
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, cmd)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%q in PATH: %w", cmd, exec.ErrNotFound)
}

// credential returns the credentials to run as u: nil when envd already is
// u and cannot or need not switch, an error when it would have to but cannot.
func credential(u *identity.User) (*syscall.Credential, error) {
	euid := uint32(os.Geteuid())
	if euid != 0 {
		if u.UID == euid {
			return nil, nil
		}
		return nil, fmt.Errorf("envd runs as uid %d and cannot run processes as %q: %w", euid, u.Name, os.ErrPermission)
	}
	groups, err := u.GroupIDs()
	if err != nil {
		return nil, fmt.Errorf("groups of %q: %w", u.Name, err)
	}
	return &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: groups}, nil
}
