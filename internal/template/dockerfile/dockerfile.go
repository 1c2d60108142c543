// Package dockerfile turns a Dockerfile into a Cocoon template build
// request (steps.Spec), the same request the E2B SDK's Template builder
// sends: FROM (a Cocoon template or an OCI image), RUN, COPY/ADD of local
// files, ENV, WORKDIR, USER, ARG, CMD/ENTRYPOINT (the start command) and
// HEALTHCHECK (the ready command). LABEL, EXPOSE, VOLUME, STOPSIGNAL and
// MAINTAINER are accepted and ignored; anything else (multi-stage builds,
// ONBUILD, SHELL, ADD of URLs or archives, heredocs, COPY --from) is an
// error naming its line.
package dockerfile

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"strings"

	"github.com/cocoon-run/cocoon/internal/template/steps"
)

// Options tune Parse.
type Options struct {
	// IsTemplate reports whether a FROM reference names a Cocoon template
	// (FROM base) rather than an image. nil: DefaultIsTemplate.
	IsTemplate func(ref string) bool
	// BuildArgs override ARG defaults (--build-arg).
	BuildArgs map[string]string
}

// Copy is a COPY step's files: Step indexes Spec.Steps; Src is the source
// (a path or glob relative to the build context) and Dest the destination.
// FilesHash is left for the caller to fill once the files are archived.
type Copy struct {
	Step int
	Src  string
	Dest string
	Line int
}

// Result is a parsed Dockerfile.
type Result struct {
	Spec  steps.Spec
	Copy  []Copy
	Notes []string // ignored instructions, one line each
}

// Error is a problem at a line of the Dockerfile.
type Error struct {
	Line int
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("Dockerfile line %d: %s", e.Line, e.Msg) }

// DefaultIsTemplate treats a bare name (no registry host, no tag, no
// digest, no "/") such as "base" as a Cocoon template, anything else
// ("debian:12", "registry.local/team/app") as an image.
func DefaultIsTemplate(ref string) bool {
	return !strings.ContainsAny(ref, ":@/")
}

// instruction is one logical line.
type instruction struct {
	line int
	cmd  string // upper case
	rest string
}

// Parse reads a Dockerfile.
func Parse(r io.Reader, opts Options) (*Result, error) {
	ins, err := split(r)
	if err != nil {
		return nil, err
	}
	p := &parser{opts: opts, args: map[string]string{}, env: map[string]string{}, res: &Result{}}
	if p.opts.IsTemplate == nil {
		p.opts.IsTemplate = DefaultIsTemplate
	}
	for _, in := range ins {
		if err := p.instruction(in); err != nil {
			var e *Error
			if !errors.As(err, &e) {
				err = &Error{Line: in.line, Msg: err.Error()}
			}
			return nil, err
		}
	}
	if !p.from {
		return nil, &Error{Line: 1, Msg: "no FROM instruction"}
	}
	p.res.Spec.StartCmd = p.startCmd()
	if p.res.Spec.Steps == nil {
		p.res.Spec.Steps = []steps.Step{}
	}
	return p.res, nil
}

var directive = regexp.MustCompile(`^#\s*([a-zA-Z]+)\s*=\s*(.*?)\s*$`)

// split joins continuation lines and drops comments and blank lines.
func split(r io.Reader) ([]instruction, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	escape := byte('\\')
	var (
		out     []instruction
		cur     strings.Builder
		start   int
		n       int
		header  = true
		pending bool
	)
	for sc.Scan() {
		n++
		line := strings.TrimRight(sc.Text(), "\r")
		trimmed := strings.TrimSpace(line)
		if header {
			if m := directive.FindStringSubmatch(trimmed); m != nil {
				if strings.EqualFold(m[1], "escape") {
					if m[2] != "\\" && m[2] != "`" {
						return nil, &Error{Line: n, Msg: fmt.Sprintf("escape directive must be \\ or `, not %q", m[2])}
					}
					escape = m[2][0]
				}
				continue
			}
			if trimmed != "" {
				header = false
			}
		}
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && pending) {
			continue // comments, also inside continuations
		}
		if trimmed == "" {
			continue
		}
		if !pending {
			start = n
			cur.Reset()
		}
		if strings.HasSuffix(trimmed, string(escape)) {
			cur.WriteString(strings.TrimSuffix(strings.TrimRight(line, " \t"), string(escape)))
			pending = true
			continue
		}
		cur.WriteString(line)
		pending = false
		out = append(out, newInstruction(start, cur.String()))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read Dockerfile: %w", err)
	}
	if pending {
		out = append(out, newInstruction(start, cur.String()))
	}
	return out, nil
}

func newInstruction(line int, s string) instruction {
	s = strings.TrimSpace(s)
	cmd, rest, _ := strings.Cut(s, " ")
	if i := strings.IndexAny(s, " \t"); i >= 0 {
		cmd, rest = s[:i], s[i+1:]
	}
	return instruction{line: line, cmd: strings.ToUpper(cmd), rest: strings.TrimSpace(rest)}
}

type parser struct {
	opts       Options
	res        *Result
	from       bool
	args       map[string]string // ARGs in scope
	globals    map[string]string // ARGs declared before FROM
	env        map[string]string // ENV so far (substitution in later instructions)
	cmd        command
	entrypoint command
}

// command is a CMD or ENTRYPOINT: exec form (argv) or shell form (a script).
type command struct {
	set   bool
	exec  []string
	shell string
}

func (p *parser) add(s steps.Step) {
	p.res.Spec.Steps = append(p.res.Spec.Steps, s)
}

func (p *parser) instruction(in instruction) error {
	if in.rest == "" && in.cmd != "HEALTHCHECK" {
		return fmt.Errorf("%s needs arguments", in.cmd)
	}
	if strings.Contains(in.rest, "<<") && (in.cmd == "RUN" || in.cmd == "COPY" || in.cmd == "ADD") && heredoc.MatchString(in.rest) {
		return fmt.Errorf("%s with a heredoc is not supported", in.cmd)
	}
	if !p.from && in.cmd != "FROM" && in.cmd != "ARG" {
		return fmt.Errorf("%s before FROM", in.cmd)
	}
	switch in.cmd {
	case "FROM":
		return p.fromInstr(in)
	case "ARG":
		return p.argInstr(in)
	case "RUN":
		flags, rest := takeFlags(in.rest)
		if len(flags) > 0 {
			return fmt.Errorf("RUN %s is not supported", flags[0])
		}
		script := rest
		if argv, ok := execForm(rest); ok {
			if len(argv) == 0 {
				return fmt.Errorf("RUN needs a command")
			}
			script = shellJoin(argv)
		}
		p.add(steps.Step{Type: steps.Run, Args: []string{p.expandArgs(script)}})
	case "COPY", "ADD":
		return p.copyInstr(in)
	case "ENV":
		kv, err := p.keyValues(in.rest, true)
		if err != nil {
			return err
		}
		for i := 0; i < len(kv); i += 2 {
			p.env[kv[i]] = kv[i+1]
		}
		p.add(steps.Step{Type: steps.Env, Args: kv})
	case "WORKDIR":
		dir, err := p.expand(unquote(in.rest))
		if err != nil {
			return err
		}
		p.add(steps.Step{Type: steps.Workdir, Args: []string{dir}})
	case "USER":
		u, err := p.expand(in.rest)
		if err != nil {
			return err
		}
		u, _, _ = strings.Cut(u, ":") // the group is the user's own
		if u == "" || strings.ContainsAny(u, " \t'\"/") {
			return fmt.Errorf("USER %q is not a user name", in.rest)
		}
		p.add(steps.Step{Type: steps.User, Args: []string{u}})
	case "CMD", "ENTRYPOINT":
		c := command{set: true}
		if argv, ok := execForm(in.rest); ok {
			c.exec = argv
		} else {
			c.shell = in.rest
		}
		if in.cmd == "CMD" {
			p.cmd = c
		} else {
			p.entrypoint = c
		}
	case "HEALTHCHECK":
		return p.healthcheck(in)
	case "LABEL", "EXPOSE", "VOLUME", "STOPSIGNAL", "MAINTAINER":
		p.res.Notes = append(p.res.Notes, fmt.Sprintf("line %d: %s ignored", in.line, in.cmd))
	case "ONBUILD", "SHELL":
		return fmt.Errorf("%s is not supported", in.cmd)
	default:
		return fmt.Errorf("unknown instruction %s", in.cmd)
	}
	return nil
}

var heredoc = regexp.MustCompile(`<<-?\s*["']?[A-Za-z_][A-Za-z0-9_]*`)

func (p *parser) fromInstr(in instruction) error {
	if p.from {
		return fmt.Errorf("multi-stage builds (a second FROM) are not supported")
	}
	flags, rest := takeFlags(in.rest)
	if len(flags) > 0 {
		return fmt.Errorf("FROM %s is not supported", flags[0])
	}
	fields := strings.Fields(rest)
	if len(fields) == 3 && strings.EqualFold(fields[1], "AS") {
		fields = fields[:1]
	}
	if len(fields) != 1 {
		return fmt.Errorf("FROM takes one image or template (FROM ref [AS name])")
	}
	ref, err := p.expand(fields[0])
	if err != nil {
		return err
	}
	if ref == "" || ref == "scratch" {
		return fmt.Errorf("FROM %q: a template needs a base image or template", fields[0])
	}
	p.from = true
	if p.opts.IsTemplate(ref) {
		p.res.Spec.FromTemplate = ref
	} else {
		p.res.Spec.FromImage = ref
	}
	// ARGs declared before FROM are only in scope for FROM itself, unless
	// redeclared (ARG NAME) after it.
	p.args = map[string]string{}
	return nil
}

func (p *parser) argInstr(in instruction) error {
	for _, f := range splitWords(in.rest) {
		name, def, hasDef := strings.Cut(f, "=")
		if !validName(name) {
			return fmt.Errorf("ARG %q: bad name", name)
		}
		v, given := p.opts.BuildArgs[name]
		if !given {
			if hasDef {
				var err error
				if def, err = p.expand(unquote(def)); err != nil {
					return err
				}
				v = def
			} else if g, ok := p.globals[name]; ok && p.from {
				v = g
			}
		}
		if !p.from {
			if p.globals == nil {
				p.globals = map[string]string{}
			}
			p.globals[name] = v
		}
		p.args[name] = v
	}
	return nil
}

func (p *parser) copyInstr(in instruction) error {
	flags, rest := takeFlags(in.rest)
	owner, mode := "", ""
	for _, f := range flags {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "--chown":
			u, err := p.expand(v)
			if err != nil {
				return err
			}
			owner, _, _ = strings.Cut(u, ":")
		case "--chmod":
			if v == "" || strings.Trim(v, "01234567") != "" {
				return fmt.Errorf("%s --chmod=%s: only octal modes are supported", in.cmd, v)
			}
			mode = v
		default:
			return fmt.Errorf("%s %s is not supported", in.cmd, k)
		}
	}
	words, ok := execForm(rest)
	if !ok {
		words = strings.Fields(rest)
	}
	if len(words) < 2 {
		return fmt.Errorf("%s needs a source and a destination", in.cmd)
	}
	for i, w := range words {
		x, err := p.expand(w)
		if err != nil {
			return err
		}
		words[i] = x
	}
	srcs, dest := words[:len(words)-1], words[len(words)-1]
	if len(srcs) > 1 && !strings.HasSuffix(dest, "/") {
		return fmt.Errorf("%s with several sources needs a destination ending in /", in.cmd)
	}
	for _, src := range srcs {
		if in.cmd == "ADD" {
			if strings.Contains(src, "://") || strings.HasPrefix(src, "git@") {
				return fmt.Errorf("ADD of a URL (%s) is not supported: use RUN curl", src)
			}
			if isArchive(src) {
				return fmt.Errorf("ADD of an archive (%s) is not supported: COPY it and RUN tar", src)
			}
		}
		clean := path.Clean(strings.TrimPrefix(src, "./"))
		if path.IsAbs(src) || clean == ".." || strings.HasPrefix(clean, "../") {
			return fmt.Errorf("%s source %q is outside the build context", in.cmd, src)
		}
		args := []string{clean, dest}
		if owner != "" || mode != "" {
			args = append(args, owner)
		}
		if mode != "" {
			args = append(args, mode)
		}
		p.res.Copy = append(p.res.Copy, Copy{Step: len(p.res.Spec.Steps), Src: clean, Dest: dest, Line: in.line})
		p.add(steps.Step{Type: steps.Copy, Args: args})
	}
	return nil
}

func isArchive(src string) bool {
	for _, ext := range []string{".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst"} {
		if strings.HasSuffix(strings.ToLower(src), ext) {
			return true
		}
	}
	return false
}

// healthcheck maps HEALTHCHECK CMD to the ready command.
func (p *parser) healthcheck(in instruction) error {
	flags, rest := takeFlags(in.rest)
	_ = flags // --interval, --timeout...: the build polls on its own
	kw, arg, _ := strings.Cut(rest, " ")
	switch strings.ToUpper(kw) {
	case "NONE":
		p.res.Spec.ReadyCmd = ""
		return nil
	case "CMD":
		arg = strings.TrimSpace(arg)
		if argv, ok := execForm(arg); ok {
			if len(argv) > 0 && argv[0] == "CMD-SHELL" {
				arg = strings.Join(argv[1:], " ")
			} else {
				arg = shellJoin(argv)
			}
		}
		if arg == "" {
			return fmt.Errorf("HEALTHCHECK CMD needs a command")
		}
		p.res.Spec.ReadyCmd = p.expandArgs(arg)
		return nil
	}
	return fmt.Errorf("HEALTHCHECK needs CMD or NONE")
}

// startCmd combines ENTRYPOINT and CMD as Docker does.
func (p *parser) startCmd() string {
	e, c := p.entrypoint, p.cmd
	switch {
	case e.set && e.shell != "":
		return p.expandArgs(e.shell)
	case e.set && len(e.exec) > 0:
		argv := append([]string(nil), e.exec...)
		if c.set && c.exec != nil {
			argv = append(argv, c.exec...)
		}
		return p.expandArgs(shellJoin(argv))
	case c.set && c.shell != "":
		return p.expandArgs(c.shell)
	case c.set:
		return p.expandArgs(shellJoin(c.exec))
	}
	return ""
}

// keyValues parses ENV's "k=v k2='v 2'" or legacy "k v w" forms.
func (p *parser) keyValues(s string, legacy bool) ([]string, error) {
	words := splitWords(s)
	if len(words) == 0 {
		return nil, fmt.Errorf("ENV needs a name and a value")
	}
	if !strings.Contains(words[0], "=") {
		if !legacy || len(words) < 2 {
			return nil, fmt.Errorf("ENV %s needs a value", words[0])
		}
		name := words[0]
		val := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(s), name))
		v, err := p.expand(unquote(val))
		if err != nil {
			return nil, err
		}
		if !validName(name) {
			return nil, fmt.Errorf("ENV %q: bad name", name)
		}
		return []string{name, v}, nil
	}
	var kv []string
	for _, w := range words {
		k, v, ok := strings.Cut(w, "=")
		if !ok || !validName(k) {
			return nil, fmt.Errorf("ENV %q: expected NAME=value", w)
		}
		x, err := p.expand(unquote(v))
		if err != nil {
			return nil, err
		}
		kv = append(kv, k, x)
	}
	return kv, nil
}

var nameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func validName(s string) bool { return nameRE.MatchString(s) }

// expand substitutes $VAR, ${VAR}, ${VAR:-default} and ${VAR:+alt} from
// the ARGs and ENVs in scope (ENV wins); unknown variables are empty.
func (p *parser) expand(s string) (string, error) {
	return expandVars(s, func(name string) (string, bool) {
		if v, ok := p.env[name]; ok {
			return v, true
		}
		v, ok := p.args[name]
		return v, ok
	}, false)
}

// expandArgs substitutes only ARGs in RUN, CMD and ENTRYPOINT (the shell
// sees ENV variables at run time, but ARGs exist only in the build);
// every other variable is left for the shell.
func (p *parser) expandArgs(s string) string {
	out, _ := expandVars(s, func(name string) (string, bool) {
		if _, isEnv := p.env[name]; isEnv {
			return "", false
		}
		v, ok := p.args[name]
		return v, ok
	}, true)
	return out
}

func expandVars(s string, lookup func(string) (string, bool), keepUnknown bool) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' && i+1 < len(s) && s[i+1] == '$' && !keepUnknown {
			b.WriteByte('$')
			i++
			continue
		}
		if c != '$' || i+1 >= len(s) {
			b.WriteByte(c)
			continue
		}
		if s[i+1] == '{' {
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return "", fmt.Errorf("unterminated ${ in %q", s)
			}
			expr := s[i+2 : i+end]
			name, op, word := expr, "", ""
			if j := strings.Index(expr, ":"); j >= 0 && j+1 < len(expr) && (expr[j+1] == '-' || expr[j+1] == '+') {
				name, op, word = expr[:j], expr[j:j+2], expr[j+2:]
			}
			if !validName(name) {
				return "", fmt.Errorf("bad variable ${%s}", expr)
			}
			v, ok := lookup(name)
			switch {
			case op == ":-" && v == "":
				if !ok && keepUnknown {
					b.WriteString(s[i : i+end+1])
					i += end
					continue
				}
				v, ok = word, true
			case op == ":+":
				if !ok && keepUnknown {
					b.WriteString(s[i : i+end+1])
					i += end
					continue
				}
				if v != "" {
					v = word
				}
				ok = true
			}
			if !ok && keepUnknown {
				b.WriteString(s[i : i+end+1])
			} else {
				b.WriteString(v)
			}
			i += end
			continue
		}
		j := i + 1
		for j < len(s) && (s[j] == '_' || s[j] >= 'a' && s[j] <= 'z' || s[j] >= 'A' && s[j] <= 'Z' || j > i+1 && s[j] >= '0' && s[j] <= '9') {
			j++
		}
		if j == i+1 {
			b.WriteByte(c)
			continue
		}
		v, ok := lookup(s[i+1 : j])
		if !ok && keepUnknown {
			b.WriteString(s[i:j])
		} else {
			b.WriteString(v)
		}
		i = j - 1
	}
	return b.String(), nil
}

// execForm parses a JSON array of strings.
func execForm(s string) ([]string, bool) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, "[") {
		return nil, false
	}
	var argv []string
	if err := json.Unmarshal([]byte(s), &argv); err != nil {
		return nil, false
	}
	return argv, true
}

// takeFlags splits leading --flags from the rest.
func takeFlags(s string) ([]string, string) {
	var flags []string
	s = strings.TrimSpace(s)
	for strings.HasPrefix(s, "--") {
		f, rest, _ := strings.Cut(s, " ")
		flags = append(flags, f)
		s = strings.TrimSpace(rest)
	}
	return flags, s
}

// splitWords splits on blanks outside quotes, keeping the quotes.
func splitWords(s string) []string {
	var out []string
	var cur strings.Builder
	var q byte
	in := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case q != 0:
			cur.WriteByte(c)
			if c == '\\' && q == '"' && i+1 < len(s) {
				i++
				cur.WriteByte(s[i])
			} else if c == q {
				q = 0
			}
		case c == '"' || c == '\'':
			q, in = c, true
			cur.WriteByte(c)
		case c == '\\' && i+1 < len(s):
			in = true
			cur.WriteByte(c)
			i++
			cur.WriteByte(s[i])
		case c == ' ' || c == '\t':
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			in = true
			cur.WriteByte(c)
		}
	}
	if in {
		out = append(out, cur.String())
	}
	return out
}

// unquote removes shell-style quotes: "a b" → a b, 'a' → a, a\ b → a b.
func unquote(s string) string {
	var b strings.Builder
	var q byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case q == '\'':
			switch c {
			case '\'':
				q = 0
			case '$':
				b.WriteString(`\$`) // literal: expand leaves it
			default:
				b.WriteByte(c)
			}
		case q == '"':
			if c == '"' {
				q = 0
			} else if c == '\\' && i+1 < len(s) && strings.IndexByte(`"\$`, s[i+1]) >= 0 {
				i++
				if s[i] == '$' {
					b.WriteByte('\\') // keep \$ for expand
				}
				b.WriteByte(s[i])
			} else {
				b.WriteByte(c)
			}
		case c == '"' || c == '\'':
			q = c
		case c == '\\' && i+1 < len(s):
			i++
			if s[i] == '$' {
				b.WriteByte('\\')
			}
			b.WriteByte(s[i])
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// shellJoin quotes argv for a POSIX shell where needed.
func shellJoin(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == "" {
			out[i] = a
		} else {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(out, " ")
}
