package codeinterp

import (
	"strings"
	"testing"

	"github.com/cocoon-run/cocoon/internal/template/dockerfile"
	"github.com/cocoon-run/cocoon/internal/template/steps"
)

func TestDockerfilesParse(t *testing.T) {
	deps, err := dockerfile.Parse(strings.NewReader(DepsDockerfile), dockerfile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if deps.Spec.FromTemplate != BaseName || len(deps.Spec.Steps) == 0 || deps.Spec.StartCmd != "" {
		t.Fatalf("deps: %+v", deps.Spec)
	}
	b, err := dockerfile.Parse(strings.NewReader(BaseDockerfile), dockerfile.Options{})
	if err != nil || b.Spec.FromTemplate != "base" || len(b.Spec.Steps) != 0 {
		t.Fatalf("base: %v %+v", err, b)
	}
	top, err := dockerfile.Parse(strings.NewReader(Dockerfile), dockerfile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := top.Spec
	if s.FromTemplate != DepsName || !strings.Contains(s.StartCmd, "/usr/local/bin/code-interpreter") || !strings.Contains(s.ReadyCmd, "49999/health") {
		t.Fatalf("top: from %q start %q ready %q", s.FromTemplate, s.StartCmd, s.ReadyCmd)
	}
	if len(top.Copy) != 1 || top.Copy[0].Src != BinaryName {
		t.Fatalf("top: copies %+v", top.Copy)
	}
	for _, st := range s.Steps {
		if st.Type == steps.Run {
			t.Fatalf("the top layer runs nothing (it must stay seconds): %+v", st)
		}
	}
}
