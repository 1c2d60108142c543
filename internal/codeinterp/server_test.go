package codeinterp

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func newTestServer(t *testing.T, langs func(tmp string) map[string]Language, def string) *httptest.Server {
	t.Helper()
	tmp := t.TempDir()
	s := New(Config{Languages: langs(tmp), DefaultLanguage: def, Cwd: tmp, Aliases: map[string]string{"js": "javascript"}})
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(func() { ts.Close(); s.Close() })
	return ts
}

// execute posts body to /execute and returns the status and the NDJSON lines.
func execute(t *testing.T, ctx context.Context, url string, body map[string]any) (int, []map[string]any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequestWithContext(ctx, "POST", url+"/execute", strings.NewReader(string(b)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return 0, nil
		}
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var lines []map[string]any
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		lines = append(lines, m)
	}
	return resp.StatusCode, lines
}

func of(lines []map[string]any, typ string) []map[string]any {
	var out []map[string]any
	for _, l := range lines {
		if l["type"] == typ {
			out = append(out, l)
		}
	}
	return out
}

func text(lines []map[string]any, typ string) string {
	var b strings.Builder
	for _, l := range of(lines, typ) {
		s, _ := l["text"].(string)
		b.WriteString(s)
	}
	return b.String()
}

func TestJavaScriptContext(t *testing.T) {
	if !Available("node") {
		t.Skip("no node")
	}
	ts := newTestServer(t, func(tmp string) map[string]Language {
		js, err := JavaScript("node", tmp)
		if err != nil {
			t.Fatal(err)
		}
		return map[string]Language{"javascript": js}
	}, "javascript")
	ctx := context.Background()

	code, lines := execute(t, ctx, ts.URL, map[string]any{"code": "var a = 41; console.log('hi', a)", "language": "js"})
	if code != 200 || text(lines, "stdout") != "hi 41\n" || len(of(lines, "end_of_execution")) != 1 {
		t.Fatalf("first cell: %d %v", code, lines)
	}
	_, lines = execute(t, ctx, ts.URL, map[string]any{"code": "a + 1"})
	if r := of(lines, "result"); len(r) != 1 || r[0]["text"] != "42" || r[0]["is_main_result"] != true {
		t.Fatalf("state across cells: %v", lines)
	}
	_, lines = execute(t, ctx, ts.URL, map[string]any{"code": "process.env.CI_TEST_VAR", "env_vars": map[string]string{"CI_TEST_VAR": "v1"}})
	if r := of(lines, "result"); len(r) != 1 || r[0]["text"] != "v1" {
		t.Fatalf("env var: %v", lines)
	}
	_, lines = execute(t, ctx, ts.URL, map[string]any{"code": "process.env.CI_TEST_VAR === undefined"})
	if r := of(lines, "result"); len(r) != 1 || r[0]["text"] != "true" {
		t.Fatalf("env var restored: %v", lines)
	}
	_, lines = execute(t, ctx, ts.URL, map[string]any{"code": "throw new TypeError('boom')"})
	if e := of(lines, "error"); len(e) != 1 || e[0]["name"] != "TypeError" || e[0]["value"] != "boom" || !strings.Contains(e[0]["traceback"].(string), "cell.js") {
		t.Fatalf("error: %v", lines)
	}
	// A client that goes away interrupts the cell; the context lives on.
	cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	execute(t, cctx, ts.URL, map[string]any{"code": "while (true) {}"})
	cancel()
	_, lines = execute(t, ctx, ts.URL, map[string]any{"code": "a"})
	if r := of(lines, "result"); len(r) != 1 || r[0]["text"] != "41" {
		t.Fatalf("after interrupt: %v", lines)
	}
	if code, _ := execute(t, ctx, ts.URL, map[string]any{"code": "1", "language": "cobol"}); code != 400 {
		t.Fatalf("unknown language: %d", code)
	}
	if code, _ := execute(t, ctx, ts.URL, map[string]any{"code": "1", "context_id": "nope"}); code != 404 {
		t.Fatalf("unknown context: %d", code)
	}
}

func TestContextsCRUD(t *testing.T) {
	if !Available("node") {
		t.Skip("no node")
	}
	ts := newTestServer(t, func(tmp string) map[string]Language {
		js, _ := JavaScript("node", tmp)
		return map[string]Language{"javascript": js}
	}, "javascript")
	resp, err := http.Post(ts.URL+"/contexts", "application/json", strings.NewReader(`{"language":"javascript","cwd":"/"}`))
	if err != nil {
		t.Fatal(err)
	}
	var c Context
	_ = json.NewDecoder(resp.Body).Decode(&c)
	resp.Body.Close()
	if resp.StatusCode != 200 || c.ID == "" || c.Language != "javascript" || c.Cwd != "/" {
		t.Fatalf("create: %d %s %s %s", resp.StatusCode, c.ID, c.Language, c.Cwd)
	}
	_, lines := execute(t, context.Background(), ts.URL, map[string]any{"code": "process.cwd()", "context_id": c.ID})
	if r := of(lines, "result"); len(r) != 1 || r[0]["text"] != "/" {
		t.Fatalf("cwd: %v", lines)
	}
	resp, _ = http.Get(ts.URL + "/contexts")
	var list []Context
	_ = json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if len(list) != 1 || list[0].ID != c.ID {
		t.Fatalf("list: %d contexts", len(list))
	}
	for _, path := range []string{"/contexts/" + c.ID + "/restart", "/contexts/" + c.ID + "/interrupt"} {
		resp, _ = http.Post(ts.URL+path, "application/json", nil)
		resp.Body.Close()
		if resp.StatusCode != 204 {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
	}
	req, _ := http.NewRequest("DELETE", ts.URL+"/contexts/"+c.ID, nil)
	resp, _ = http.DefaultClient.Do(req)
	resp.Body.Close()
	if resp.StatusCode != 204 {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	resp, _ = http.DefaultClient.Do(req)
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("delete again: %d", resp.StatusCode)
	}
	resp, _ = http.Post(ts.URL+"/contexts", "application/json", strings.NewReader(`{"language":"r"}`))
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("unknown language: %d", resp.StatusCode)
	}
}

func TestBashContext(t *testing.T) {
	ts := newTestServer(t, func(string) map[string]Language {
		return map[string]Language{"bash": Bash("bash")}
	}, "bash")
	ctx := context.Background()
	_, lines := execute(t, ctx, ts.URL, map[string]any{"code": "cd /tmp && V=41 && echo out && echo err >&2"})
	if text(lines, "stdout") != "out\n" || text(lines, "stderr") != "err\n" || len(of(lines, "end_of_execution")) != 1 {
		t.Fatalf("first cell: %v", lines)
	}
	_, lines = execute(t, ctx, ts.URL, map[string]any{"code": "echo $((V + 1)) $PWD $ONCE", "env_vars": map[string]string{"ONCE": "o"}})
	if text(lines, "stdout") != "42 /tmp o\n" {
		t.Fatalf("state: %v", lines)
	}
	_, lines = execute(t, ctx, ts.URL, map[string]any{"code": "echo \"[$ONCE]\"; false"})
	if text(lines, "stdout") != "[]\n" || len(of(lines, "error")) != 1 {
		t.Fatalf("env restored, exit code as error: %v", lines)
	}
	cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	execute(t, cctx, ts.URL, map[string]any{"code": "sleep 100"})
	cancel()
	_, lines = execute(t, ctx, ts.URL, map[string]any{"code": "echo $V"})
	if text(lines, "stdout") != "41\n" {
		t.Fatalf("after interrupt: %v", lines)
	}
}

// hostPython is a Python with ipykernel on this host, or "".
func hostPython() string {
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(p, "-c", "import ipykernel, matplotlib, pandas").Run() == nil {
			return p
		}
	}
	return ""
}

func TestPythonKernel(t *testing.T) {
	py := hostPython()
	if py == "" {
		t.Skip("no python3 with ipykernel, matplotlib and pandas (apt-get install python3-ipykernel python3-matplotlib python3-pandas)")
	}
	ts := newTestServer(t, func(tmp string) map[string]Language {
		l, err := Python(py, tmp)
		if err != nil {
			t.Fatal(err)
		}
		return map[string]Language{"python": l}
	}, "python")
	ctx := context.Background()
	_, lines := execute(t, ctx, ts.URL, map[string]any{"code": "import sys\nx = 1\nprint('out')\nprint('err', file=sys.stderr)"})
	if text(lines, "stdout") != "out\n" || text(lines, "stderr") != "err\n" || len(of(lines, "number_of_executions")) != 1 || len(of(lines, "end_of_execution")) != 1 {
		t.Fatalf("first cell: %v", lines)
	}
	_, lines = execute(t, ctx, ts.URL, map[string]any{"code": "x += 1\nx"})
	if r := of(lines, "result"); len(r) != 1 || r[0]["text"] != "2" {
		t.Fatalf("state: %v", lines)
	}
	_, lines = execute(t, ctx, ts.URL, map[string]any{"code": "1/0"})
	if e := of(lines, "error"); len(e) != 1 || e[0]["name"] != "ZeroDivisionError" || !strings.Contains(e[0]["traceback"].(string), "ZeroDivisionError") {
		t.Fatalf("error: %v", lines)
	}
	_, lines = execute(t, ctx, ts.URL, map[string]any{"code": "import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})"})
	r := of(lines, "result")
	if len(r) != 1 || r[0]["html"] == nil || r[0]["data"] == nil {
		t.Fatalf("dataframe: %v", lines)
	}
	if d, _ := json.Marshal(r[0]["data"]); string(d) != `{"a":[1,2],"b":["x","y"]}` {
		t.Fatalf("dataframe data: %s", d)
	}
	_, lines = execute(t, ctx, ts.URL, map[string]any{"code": "import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [3, 5])\nplt.title('B')\nplt.show()"})
	r = of(lines, "result")
	if len(r) != 1 || r[0]["png"] == nil {
		t.Fatalf("chart: %v", lines)
	}
	chart, _ := r[0]["chart"].(map[string]any)
	if chart["type"] != "bar" || chart["title"] != "B" {
		t.Fatalf("chart: %v", chart)
	}
	if els, _ := json.Marshal(chart["elements"]); string(els) != `[{"group":"","label":"a","value":3},{"group":"","label":"b","value":5}]` {
		t.Fatalf("bar elements: %s", els)
	}
	_, lines = execute(t, ctx, ts.URL, map[string]any{"code": "import os\nos.environ.get('CI_V')", "env_vars": map[string]string{"CI_V": "yes"}})
	if r := of(lines, "result"); len(r) != 1 || r[0]["text"] != "'yes'" {
		t.Fatalf("env var: %v", lines)
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	execute(t, cctx, ts.URL, map[string]any{"code": "import time\nwhile True: time.sleep(0.01)"})
	cancel()
	_, lines = execute(t, ctx, ts.URL, map[string]any{"code": "x"})
	if r := of(lines, "result"); len(r) != 1 || r[0]["text"] != "2" {
		t.Fatalf("after interrupt: %v", lines)
	}
	// A kernel that dies is restarted and says so.
	_, lines = execute(t, ctx, ts.URL, map[string]any{"code": "import os\nos._exit(3)"})
	if e := of(lines, "error"); len(e) != 1 || e[0]["name"] != "KernelDied" {
		t.Fatalf("kernel exit: %v", lines)
	}
	_, lines = execute(t, ctx, ts.URL, map[string]any{"code": "1+1"})
	if r := of(lines, "result"); len(r) != 1 || r[0]["text"] != "2" {
		t.Fatalf("after restart: %v", lines)
	}
}

func TestMain(m *testing.M) {
	os.Exit(m.Run())
}
