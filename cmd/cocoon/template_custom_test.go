package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/internal/template/dockerfile"
	"github.com/cocoon-run/cocoon/internal/template/steps"
)

func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for p, data := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func tarNames(t *testing.T, data []byte) []string {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
	sort.Strings(names)
	return names
}

var time1 = time.Unix(1600000000, 0)

const testDockerfile = `FROM base
ARG V=3
ENV APP_HOME=/opt/app
WORKDIR $APP_HOME
COPY app/ ./
COPY *.txt /etc/conf/
RUN pip install -r requirements.txt==$V
USER user
CMD ["python3", "app/main.py"]
HEALTHCHECK CMD curl -sf localhost:8000
`

func TestDockerfileRequest(t *testing.T) {
	ctxDir := t.TempDir()
	writeTree(t, ctxDir, map[string]string{
		"app/main.py": "print('hi')", "app/lib/util.py": "x = 1", "a.txt": "a", "b.txt": "b", "other.md": "no",
	})
	res, err := dockerfile.Parse(strings.NewReader(testDockerfile), dockerfile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	spec, uploads, err := dockerfileRequest(res, ctxDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := spec.Validate(); err != nil {
		t.Fatalf("the request does not validate: %v", err)
	}
	want := []steps.Step{
		{Type: steps.Env, Args: []string{"APP_HOME", "/opt/app"}},
		{Type: steps.Workdir, Args: []string{"/opt/app"}},
		{Type: steps.Copy, Args: []string{"app", "./"}},
		{Type: steps.Copy, Args: []string{"*.txt", "/etc/conf/"}},
		{Type: steps.Run, Args: []string{"pip install -r requirements.txt==3"}},
		{Type: steps.User, Args: []string{"user"}},
	}
	if len(spec.Steps) != len(want) {
		t.Fatalf("got %d steps, want %d", len(spec.Steps), len(want))
	}
	for i, w := range want {
		got := spec.Steps[i]
		if got.Type != w.Type || strings.Join(got.Args, "|") != strings.Join(w.Args, "|") {
			t.Errorf("step %d: got %+v, want %+v", i+1, got, w)
		}
		if (got.Type == steps.Copy) != (len(got.FilesHash) == 64) {
			t.Errorf("step %d: filesHash %q", i+1, got.FilesHash)
		}
	}
	if spec.FromTemplate != "base" || spec.StartCmd != "python3 app/main.py" || spec.ReadyCmd != "curl -sf localhost:8000" {
		t.Errorf("spec: %+v", spec)
	}
	if got := tarNames(t, uploads[spec.Steps[2].FilesHash]); strings.Join(got, ",") != "app/,app/lib/,app/lib/util.py,app/main.py" {
		t.Errorf("app archive: %v", got)
	}
	if got := tarNames(t, uploads[spec.Steps[3].FilesHash]); strings.Join(got, ",") != "a.txt,b.txt" {
		t.Errorf("txt archive: %v", got)
	}

	// Same files → same hash (times do not count); changed contents → new hash.
	now := spec.Steps[2].FilesHash
	if err := os.Chtimes(filepath.Join(ctxDir, "app/main.py"), time1, time1); err != nil {
		t.Fatal(err)
	}
	spec2, _, _ := dockerfileRequest(res, ctxDir)
	if spec2.Steps[2].FilesHash != now {
		t.Errorf("hash changed with the modification time only")
	}
	writeTree(t, ctxDir, map[string]string{"app/main.py": "print('changed')"})
	spec3, _, _ := dockerfileRequest(res, ctxDir)
	if spec3.Steps[2].FilesHash == now || spec3.Steps[3].FilesHash != spec.Steps[3].FilesHash {
		t.Errorf("hashes after a change: %s %s", spec3.Steps[2].FilesHash, spec3.Steps[3].FilesHash)
	}

	// A missing source is an error naming the line.
	res2, _ := dockerfile.Parse(strings.NewReader("FROM base\n\nCOPY missing /x\n"), dockerfile.Options{})
	if _, _, err := dockerfileRequest(res2, ctxDir); err == nil || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("missing source: %v", err)
	}
}

// TestRemoteBuild runs the CLI's request sequence against a fake api that
// checks it and fails the RUN step.
func TestRemoteBuild(t *testing.T) {
	ctxDir := t.TempDir()
	writeTree(t, ctxDir, map[string]string{"Dockerfile": "FROM base\nCOPY f /f\nRUN false\n", "f": "data"})
	var (
		mu       sync.Mutex
		calls    []string
		uploaded = map[string][]byte{}
		spec     steps.Spec
	)
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, r.Method+" "+r.URL.Path)
		if r.URL.Path != "/up" && r.Header.Get("X-API-KEY") != "k" {
			w.WriteHeader(401)
			return
		}
		switch {
		case r.URL.Path == "/templates":
			json.NewEncoder(w).Encode([]map[string]any{{"templateID": "t1", "aliases": []string{"base"}}})
		case r.URL.Path == "/v3/templates":
			w.WriteHeader(202)
			json.NewEncoder(w).Encode(map[string]string{"templateID": "t2", "buildID": "b1"})
		case strings.HasPrefix(r.URL.Path, "/templates/t2/files/"):
			json.NewEncoder(w).Encode(map[string]any{"present": false, "url": srv.URL + "/up?h=" + filepath.Base(r.URL.Path)})
		case r.URL.Path == "/up":
			b, _ := io.ReadAll(r.Body)
			uploaded[r.URL.Query().Get("h")] = b
			w.WriteHeader(204)
		case r.URL.Path == "/v2/templates/t2/builds/b1":
			json.NewDecoder(r.Body).Decode(&spec)
			w.WriteHeader(202)
		case r.URL.Path == "/templates/t2/builds/b1/status":
			json.NewEncoder(w).Encode(map[string]any{
				"status": "error",
				"logEntries": []map[string]any{
					{"message": "[2/2] RUN false", "step": "2"}, {"message": "some output", "step": "2"},
				},
				"reason": map[string]any{"message": "step 2 (RUN false) failed: exit code 1", "step": "2"},
			})
		default:
			w.WriteHeader(404)
		}
	}))
	defer srv.Close()
	var out, errOut bytes.Buffer
	f := &customFlags{file: filepath.Join(ctxDir, "Dockerfile"), name: "mine", apiURL: srv.URL, apiKey: "k"}
	err := runCustomBuild(context.Background(), f, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "exit code 1") {
		t.Fatalf("got %v, want the step's failure", err)
	}
	if !strings.Contains(errOut.String(), "--- output of step 2") || !strings.Contains(errOut.String(), "some output") {
		t.Errorf("stderr:\n%s", errOut.String())
	}
	if len(spec.Steps) != 2 || spec.FromTemplate != "base" || uploaded[spec.Steps[0].FilesHash] == nil {
		t.Errorf("spec %+v, uploads %d", spec, len(uploaded))
	}
	want := "GET /templates,POST /v3/templates,GET /templates/t2/files/" + spec.Steps[0].FilesHash + ",PUT /up,POST /v2/templates/t2/builds/b1,GET /templates/t2/builds/b1/status"
	if got := strings.Join(calls, ","); got != want {
		t.Errorf("calls:\n got %s\nwant %s", got, want)
	}
}
