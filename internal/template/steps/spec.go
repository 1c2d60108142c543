// Package steps describes and runs a custom template's build steps (the E2B
// SDK's Template builder, or a parsed Dockerfile): FROM (an image or another
// template), RUN, COPY, ENV, WORKDIR, USER, and the start and ready
// commands. Steps run inside a build sandbox through its envd, exactly as a
// user's commands would; keys derived from the steps let a rebuild with the
// same prefix reuse cached artifacts.
package steps

import (
	"encoding/json"
	"fmt"
	"path"
	"strings"

	"github.com/cocoon-run/cocoon/internal/template/cache"
)

// Step types.
const (
	Run     = "RUN"
	Copy    = "COPY"
	Env     = "ENV"
	Workdir = "WORKDIR"
	User    = "USER"
)

// Step is one instruction, as the SDK sends it.
//
//	RUN     args: [command, user?]
//	COPY    args: [src, dest, user?, mode?], filesHash names the uploaded archive
//	ENV     args: [key, value, key, value...]
//	WORKDIR args: [dir]
//	USER    args: [name]
type Step struct {
	Type      string   `json:"type"`
	Args      []string `json:"args"`
	Force     bool     `json:"force,omitempty"`
	FilesHash string   `json:"filesHash,omitempty"`
}

// Registry holds credentials for fromImage.
type Registry struct {
	Type     string `json:"type,omitempty"`
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
}

// Spec is a template build request (POST /v2/templates/{id}/builds/{id}).
type Spec struct {
	FromImage         string    `json:"fromImage,omitempty"`
	FromTemplate      string    `json:"fromTemplate,omitempty"`
	FromImageRegistry *Registry `json:"fromImageRegistry,omitempty"`
	StartCmd          string    `json:"startCmd,omitempty"`
	ReadyCmd          string    `json:"readyCmd,omitempty"`
	Force             bool      `json:"force,omitempty"`
	Steps             []Step    `json:"steps"`
}

// Validate checks the shape of every step; errors name the step (1-based).
func (s Spec) Validate() error {
	if s.FromImage != "" && s.FromTemplate != "" {
		return fmt.Errorf("fromImage and fromTemplate are exclusive")
	}
	if r := s.FromImageRegistry; r != nil && r.Type != "" && r.Type != "registry" {
		return fmt.Errorf("registry type %q is not supported (only username/password registries)", r.Type)
	}
	for i, st := range s.Steps {
		n := len(st.Args)
		var err error
		switch st.Type {
		case Run:
			if n < 1 || n > 2 || strings.TrimSpace(st.Args[0]) == "" {
				err = fmt.Errorf("RUN needs a command")
			}
		case Copy:
			if n < 2 || st.Args[0] == "" || st.Args[1] == "" {
				err = fmt.Errorf("COPY needs a source and a destination")
			} else if st.FilesHash == "" {
				err = fmt.Errorf("COPY %s needs filesHash", st.Args[0])
			} else if _, cerr := cleanSource(st.Args[0]); cerr != nil {
				err = cerr
			}
		case Env:
			if n == 0 || n%2 != 0 {
				err = fmt.Errorf("ENV needs key/value pairs")
			}
		case Workdir:
			if n != 1 || st.Args[0] == "" {
				err = fmt.Errorf("WORKDIR needs one directory")
			}
		case User:
			if n != 1 || st.Args[0] == "" || strings.ContainsAny(st.Args[0], " :/'\"") {
				err = fmt.Errorf("USER needs one user name")
			}
		default:
			err = fmt.Errorf("unsupported step type %q", st.Type)
		}
		if err != nil {
			return fmt.Errorf("step %d: %w", i+1, err)
		}
	}
	return nil
}

// cleanSource checks a COPY source: relative, not climbing out.
func cleanSource(src string) (string, error) {
	if path.IsAbs(src) {
		return "", fmt.Errorf("COPY source %q must be relative to the build context", src)
	}
	c := path.Clean(src)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("COPY source %q leaves the build context", src)
	}
	return c, nil
}

// Keys derives the cache keys of a build on top of parent (the parent
// template build's ID, or the image reference): layer identifies the root
// filesystem after the steps, final the finished template (layer plus the
// start and ready commands and the resource shape). A step's key covers
// every step before it, so equal keys mean equal inputs.
func Keys(parent string, s Spec, shape ...int) (layer, final string) {
	layer = cache.Key("layer", "1", parent)
	for _, st := range s.Steps {
		b, _ := json.Marshal(struct {
			T string
			A []string
			H string
		}{st.Type, st.Args, st.FilesHash})
		layer = cache.Key("step", layer, string(b))
	}
	parts := []string{"final", "1", layer, s.StartCmd, s.ReadyCmd}
	for _, v := range shape {
		parts = append(parts, fmt.Sprint(v))
	}
	return layer, cache.Key(parts...)
}

// State is what ENV, WORKDIR and USER steps accumulate; it applies to the
// later steps and to the start command.
type State struct {
	Env     map[string]string
	Workdir string
	User    string
}

// Apply updates the state for an ENV, WORKDIR or USER step.
func (st *State) Apply(s Step) {
	switch s.Type {
	case Env:
		if st.Env == nil {
			st.Env = map[string]string{}
		}
		for i := 0; i+1 < len(s.Args); i += 2 {
			st.Env[s.Args[i]] = s.Args[i+1]
		}
	case Workdir:
		st.Workdir = st.resolve(s.Args[0])
	case User:
		st.User = s.Args[0]
	}
}

// resolve makes p absolute against the working directory.
func (st *State) resolve(p string) string {
	if path.IsAbs(p) {
		return p
	}
	wd := st.Workdir
	if wd == "" {
		wd = "/home/" + st.user()
		if st.user() == "root" {
			wd = "/root"
		}
	}
	out := path.Join(wd, p)
	if strings.HasSuffix(p, "/") {
		out += "/"
	}
	return out
}

func (st *State) user() string {
	if st.User == "" {
		return DefaultUser
	}
	return st.User
}

// DefaultUser is the account steps run as unless USER or the step names one.
const DefaultUser = "user"

// Final returns the state after all of s's steps.
func Final(s Spec) State {
	var st State
	for _, step := range s.Steps {
		st.Apply(step)
	}
	return st
}
