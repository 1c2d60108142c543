package steps

import (
	"strings"
	"testing"
)

func TestKeys(t *testing.T) {
	base := Spec{
		StartCmd: "python -m http.server", ReadyCmd: "curl -s localhost:8000",
		Steps: []Step{
			{Type: Run, Args: []string{"apt-get install -y curl", "root"}},
			{Type: Copy, Args: []string{"app", "/app"}, FilesHash: strings.Repeat("a", 64)},
			{Type: Env, Args: []string{"A", "1"}},
		},
	}
	clone := func(f func(*Spec)) Spec {
		s := base
		s.Steps = append([]Step(nil), base.Steps...)
		for i := range s.Steps {
			s.Steps[i].Args = append([]string(nil), base.Steps[i].Args...)
		}
		f(&s)
		return s
	}
	layer0, final0 := Keys("parent", base, 2, 512)

	tests := []struct {
		name              string
		parent            string
		spec              Spec
		shape             []int
		sameLayer, sameFn bool
	}{
		{"identical", "parent", clone(func(*Spec) {}), []int{2, 512}, true, true},
		{"force flag alone", "parent", clone(func(s *Spec) { s.Steps[0].Force = true }), []int{2, 512}, true, true},
		{"changed RUN", "parent", clone(func(s *Spec) { s.Steps[0].Args[0] = "apt-get install -y wget" }), []int{2, 512}, false, false},
		{"changed RUN user", "parent", clone(func(s *Spec) { s.Steps[0].Args[1] = "user" }), []int{2, 512}, false, false},
		{"changed files", "parent", clone(func(s *Spec) { s.Steps[1].FilesHash = strings.Repeat("b", 64) }), []int{2, 512}, false, false},
		{"changed COPY dest", "parent", clone(func(s *Spec) { s.Steps[1].Args[1] = "/srv" }), []int{2, 512}, false, false},
		{"changed ENV", "parent", clone(func(s *Spec) { s.Steps[2].Args[1] = "2" }), []int{2, 512}, false, false},
		{"step added", "parent", clone(func(s *Spec) { s.Steps = append(s.Steps, Step{Type: Workdir, Args: []string{"/app"}}) }), []int{2, 512}, false, false},
		{"steps reordered", "parent", clone(func(s *Spec) { s.Steps[0], s.Steps[2] = s.Steps[2], s.Steps[0] }), []int{2, 512}, false, false},
		{"other parent", "parent2", clone(func(*Spec) {}), []int{2, 512}, false, false},
		{"start command", "parent", clone(func(s *Spec) { s.StartCmd = "sleep infinity" }), []int{2, 512}, true, false},
		{"ready command", "parent", clone(func(s *Spec) { s.ReadyCmd = "true" }), []int{2, 512}, true, false},
		{"shape", "parent", clone(func(*Spec) {}), []int{4, 512}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			layer, final := Keys(tt.parent, tt.spec, tt.shape...)
			if got := layer == layer0; got != tt.sameLayer {
				t.Errorf("same layer key: got %v, want %v", got, tt.sameLayer)
			}
			if got := final == final0; got != tt.sameFn {
				t.Errorf("same final key: got %v, want %v", got, tt.sameFn)
			}
		})
	}

	// Args boundaries matter: ["a b"] and ["a", "b"] are different steps.
	l1, _ := Keys("p", Spec{Steps: []Step{{Type: Env, Args: []string{"A", "b c"}}}})
	l2, _ := Keys("p", Spec{Steps: []Step{{Type: Env, Args: []string{"A b", "c"}}}})
	if l1 == l2 {
		t.Errorf("keys ignore argument boundaries")
	}
}

func TestValidate(t *testing.T) {
	hash := strings.Repeat("0", 64)
	tests := []struct {
		name string
		spec Spec
		want string // substring of the error; "" for valid
	}{
		{"empty", Spec{}, ""},
		{"all kinds", Spec{FromImage: "debian:12", Steps: []Step{
			{Type: Run, Args: []string{"true"}}, {Type: Run, Args: []string{"true", "root"}},
			{Type: Copy, Args: []string{"a", "/b", "user", "0755"}, FilesHash: hash},
			{Type: Env, Args: []string{"A", "1", "B", ""}}, {Type: Workdir, Args: []string{"/app"}},
			{Type: User, Args: []string{"root"}},
		}}, ""},
		{"both parents", Spec{FromImage: "x", FromTemplate: "y"}, "exclusive"},
		{"registry type", Spec{FromImage: "x", FromImageRegistry: &Registry{Type: "aws"}}, `registry type "aws"`},
		{"empty RUN", Spec{Steps: []Step{{Type: Run, Args: []string{"  "}}}}, "step 1: RUN needs a command"},
		{"RUN no args", Spec{Steps: []Step{{Type: Run}}}, "step 1: RUN needs a command"},
		{"COPY no dest", Spec{Steps: []Step{{Type: Run, Args: []string{"x"}}, {Type: Copy, Args: []string{"a"}, FilesHash: hash}}}, "step 2: COPY needs a source and a destination"},
		{"COPY no hash", Spec{Steps: []Step{{Type: Copy, Args: []string{"a", "/b"}}}}, "needs filesHash"},
		{"COPY absolute", Spec{Steps: []Step{{Type: Copy, Args: []string{"/etc", "/b"}, FilesHash: hash}}}, "relative to the build context"},
		{"COPY climbing", Spec{Steps: []Step{{Type: Copy, Args: []string{"a/../../x", "/b"}, FilesHash: hash}}}, "leaves the build context"},
		{"ENV odd", Spec{Steps: []Step{{Type: Env, Args: []string{"A"}}}}, "ENV needs key/value pairs"},
		{"WORKDIR two", Spec{Steps: []Step{{Type: Workdir, Args: []string{"/a", "/b"}}}}, "WORKDIR needs one directory"},
		{"USER injection", Spec{Steps: []Step{{Type: User, Args: []string{"root; rm -rf /"}}}}, "USER needs one user name"},
		{"unknown", Spec{Steps: []Step{{Type: "ADD", Args: []string{"a", "b"}}}}, `step 1: unsupported step type "ADD"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("got %v, want valid", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestFinalState(t *testing.T) {
	s := Spec{Steps: []Step{
		{Type: Env, Args: []string{"A", "1", "B", "2"}},
		{Type: Workdir, Args: []string{"app"}},
		{Type: Workdir, Args: []string{"sub"}},
		{Type: User, Args: []string{"root"}},
		{Type: Env, Args: []string{"A", "3"}},
	}}
	st := Final(s)
	if st.Workdir != "/home/user/app/sub" || st.User != "root" || st.Env["A"] != "3" || st.Env["B"] != "2" {
		t.Errorf("got %+v", st)
	}
	if got := st.resolve("x/"); got != "/home/user/app/sub/x/" {
		t.Errorf("resolve: got %q", got)
	}
	var root State
	root.Apply(Step{Type: User, Args: []string{"root"}})
	if got := root.resolve("x"); got != "/root/x" {
		t.Errorf("root resolve: got %q", got)
	}
}
