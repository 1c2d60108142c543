package dockerfile

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/cocoon-run/cocoon/internal/template/steps"
)

func run(s string) steps.Step { return steps.Step{Type: steps.Run, Args: []string{s}} }
func env(kv ...string) steps.Step {
	return steps.Step{Type: steps.Env, Args: kv}
}
func cp(args ...string) steps.Step { return steps.Step{Type: steps.Copy, Args: args} }

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		in   string
		opts Options
		want steps.Spec
	}{
		{
			name: "template parent, shell and exec RUN, continuation, comments",
			in: `# syntax=docker/dockerfile:1
FROM base
# a comment
RUN apt-get update && \
    # comment inside a continuation
    apt-get install -y \
      curl
RUN ["echo", "hello world", "it's"]
CMD python3 -m http.server 8000
`,
			want: steps.Spec{FromTemplate: "base", StartCmd: "python3 -m http.server 8000", Steps: []steps.Step{
				run("apt-get update &&     apt-get install -y       curl"),
				run(`echo 'hello world' 'it'\''s'`),
			}},
		},
		{
			name: "image parent",
			in:   "FROM registry.local:5000/team/app:v1 AS build\nRUN true\n",
			want: steps.Spec{FromImage: "registry.local:5000/team/app:v1", Steps: []steps.Step{run("true")}},
		},
		{
			name: "custom IsTemplate",
			in:   "FROM my/tmpl\n",
			opts: Options{IsTemplate: func(r string) bool { return r == "my/tmpl" }},
			want: steps.Spec{FromTemplate: "my/tmpl", Steps: []steps.Step{}},
		},
		{
			name: "ENV both forms and substitution",
			in: `FROM base
ENV A=1 B="two words" C=${A}-x
ENV D legacy value here
ENV E=$D\$HOME F='$A'
WORKDIR /app/$A
`,
			want: steps.Spec{FromTemplate: "base", Steps: []steps.Step{
				env("A", "1", "B", "two words", "C", "-x"), // Docker: values from before the instruction
				env("D", "legacy value here"),
				env("E", "legacy value here$HOME", "F", "$A"),
				{Type: steps.Workdir, Args: []string{"/app/1"}},
			}},
		},
		{
			name: "USER, COPY flags, several sources, ADD of local files",
			in: `FROM base
USER root:root
COPY --chown=user:user --chmod=0755 bin/run.sh ./lib/ /opt/app/
COPY ["my file", "/data"]
ADD config.yml /etc/app.yml
USER user
`,
			want: steps.Spec{FromTemplate: "base", Steps: []steps.Step{
				{Type: steps.User, Args: []string{"root"}},
				cp("bin/run.sh", "/opt/app/", "user", "0755"),
				cp("lib", "/opt/app/", "user", "0755"),
				cp("my file", "/data"),
				cp("config.yml", "/etc/app.yml"),
				{Type: steps.User, Args: []string{"user"}},
			}},
		},
		{
			name: "ARG defaults, build args, scope across FROM",
			in: `ARG TAG=12
ARG REG
FROM debian:${TAG}
ARG TAG
ARG VERSION=1.0
ARG NAME=world
RUN echo $VERSION ${NAME} $HOME ${MISSING:-x} && export P=$VERSION
ENV V=$VERSION
RUN echo $V
`,
			opts: Options{BuildArgs: map[string]string{"NAME": "cocoon"}},
			want: steps.Spec{FromImage: "debian:12", Steps: []steps.Step{
				run("echo 1.0 cocoon $HOME ${MISSING:-x} && export P=1.0"),
				env("V", "1.0"),
				run("echo $V"),
			}},
		},
		{
			name: "ENTRYPOINT exec with CMD args, HEALTHCHECK, ignored instructions",
			in: `FROM base
LABEL a=b
EXPOSE 8080
VOLUME /data
ENTRYPOINT ["python3", "-m", "http.server"]
CMD ["8080"]
HEALTHCHECK --interval=5s CMD curl -sf localhost:8080
STOPSIGNAL SIGTERM
`,
			want: steps.Spec{FromTemplate: "base", StartCmd: "python3 -m http.server 8080", ReadyCmd: "curl -sf localhost:8080", Steps: []steps.Step{}},
		},
		{
			name: "shell ENTRYPOINT ignores CMD; last CMD wins",
			in:   "FROM base\nCMD [\"a\"]\nCMD [\"b\"]\nENTRYPOINT exec node server.js\n",
			want: steps.Spec{FromTemplate: "base", StartCmd: "exec node server.js", Steps: []steps.Step{}},
		},
		{
			name: "exec CMD quoting, HEALTHCHECK exec form",
			in:   "FROM base\nCMD [\"sh\", \"-c\", \"sleep infinity\"]\nHEALTHCHECK CMD [\"CMD-SHELL\", \"test -f /ready\"]\n",
			want: steps.Spec{FromTemplate: "base", StartCmd: "sh -c 'sleep infinity'", ReadyCmd: "test -f /ready", Steps: []steps.Step{}},
		},
		{
			name: "escape directive",
			in:   "# escape=`\nFROM base\nRUN echo a `\n  b\\c\n",
			want: steps.Spec{FromTemplate: "base", Steps: []steps.Step{run(`echo a   b\c`)}},
		},
		{
			name: "lower-case instructions, CRLF",
			in:   "from base\r\nrun echo hi\r\n",
			want: steps.Spec{FromTemplate: "base", Steps: []steps.Step{run("echo hi")}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(strings.NewReader(tt.in), tt.opts)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(got.Spec, tt.want) {
				g, _ := json.MarshalIndent(got.Spec, "", "  ")
				w, _ := json.MarshalIndent(tt.want, "", "  ")
				t.Errorf("got\n%s\nwant\n%s", g, w)
			}
		})
	}
}

func TestParseCopies(t *testing.T) {
	got, err := Parse(strings.NewReader("FROM base\nRUN true\nCOPY a b/ /dst/\nCOPY ./c/../d /x\n"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := []Copy{{Step: 1, Src: "a", Dest: "/dst/", Line: 3}, {Step: 2, Src: "b", Dest: "/dst/", Line: 3}, {Step: 3, Src: "d", Dest: "/x", Line: 4}}
	if !reflect.DeepEqual(got.Copy, want) {
		t.Errorf("got %+v, want %+v", got.Copy, want)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		line int
		want string
	}{
		{"no FROM", "RUN true\n", 1, "RUN before FROM"},
		{"empty", "# nothing\n", 1, "no FROM"},
		{"multi-stage", "FROM base\nRUN true\nFROM debian:12\n", 3, "multi-stage"},
		{"ONBUILD", "FROM base\n\nONBUILD RUN true\n", 3, "ONBUILD is not supported"},
		{"SHELL", "FROM base\nSHELL [\"/bin/bash\", \"-c\"]\n", 2, "SHELL is not supported"},
		{"ADD URL", "FROM base\nADD https://example.com/x.tgz /x\n", 2, "ADD of a URL"},
		{"ADD archive", "FROM base\nADD app.tar.gz /app\n", 2, "ADD of an archive"},
		{"COPY --from", "FROM base\nCOPY --from=build /a /b\n", 2, "COPY --from is not supported"},
		{"COPY outside", "FROM base\nCOPY ../secret /x\n", 2, "outside the build context"},
		{"COPY absolute", "FROM base\nCOPY /etc/passwd /x\n", 2, "outside the build context"},
		{"COPY one arg", "FROM base\nCOPY a\n", 2, "needs a source and a destination"},
		{"COPY several to file", "FROM base\nCOPY a b /x\n", 2, "ending in /"},
		{"RUN mount", "FROM base\nRUN --mount=type=cache,target=/x true\n", 2, "RUN --mount=type=cache,target=/x is not supported"},
		{"heredoc", "FROM base\nRUN <<EOF\necho\nEOF\n", 2, "heredoc"},
		{"unknown", "FROM base\nFOO bar\n", 2, "unknown instruction FOO"},
		{"continued line number", "FROM base\nRUN a \\\n  b\nBAD x\n", 4, "unknown instruction BAD"},
		{"FROM scratch", "FROM scratch\n", 1, "needs a base"},
		{"FROM platform", "FROM --platform=linux/arm64 debian\n", 1, "--platform"},
		{"ENV no value", "FROM base\nENV A\n", 2, "needs a value"},
		{"bad chmod", "FROM base\nCOPY --chmod=u+x a /b\n", 2, "octal"},
		{"bad variable", "FROM base\nENV A=${\n", 2, "unterminated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tt.in), Options{})
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("got %v, want an *Error", err)
			}
			if e.Line != tt.line || !strings.Contains(e.Msg, tt.want) {
				t.Errorf("got line %d %q, want line %d containing %q", e.Line, e.Msg, tt.line, tt.want)
			}
		})
	}
}
