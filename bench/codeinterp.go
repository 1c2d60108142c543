package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// codeInterpreterPort is the code interpreter's port in its sandboxes
// (internal/codeinterp.Port, the SDK's JUPYTER_PORT).
const codeInterpreterPort = 49999

// RunCode is POST /execute on the code interpreter through the proxy, as
// the @e2b/code-interpreter SDK sends it; it returns the main result's
// text once end_of_execution arrives.
func (c *Client) RunCode(ctx context.Context, sb Sandbox, code string) (string, error) {
	body, _ := json.Marshal(map[string]any{"code": code})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.ProxyURL+"/execute", strings.NewReader(string(body)))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("E2b-Sandbox-Id", sb.ID)
	req.Header.Set("E2b-Sandbox-Port", strconv.Itoa(codeInterpreterPort))
	if sb.AccessToken != "" {
		req.Header.Set("X-Access-Token", sb.AccessToken)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("execute: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 64<<20)
	text := ""
	for sc.Scan() {
		var line struct {
			Type, Text, Name, Value string
			Main                    bool `json:"is_main_result"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return "", err
		}
		switch line.Type {
		case "result":
			if line.Main {
				text = line.Text
			}
		case "error":
			return "", fmt.Errorf("execute: %s: %s", line.Name, line.Value)
		case "end_of_execution":
			return text, nil
		}
	}
	return "", fmt.Errorf("execute: the stream ended without end_of_execution: %v", sc.Err())
}

// benchCodeInterpreter: Sandbox.create from the code-interpreter template →
// first runCode('1+1') result (the kernel is warm in the snapshot), over
// Creates creates; then warm runCode('x += 1') round trips in one sandbox.
// Skipped with a note when the server has no such template (`cocoon
// template build code-interpreter`).
func benchCodeInterpreter(ctx context.Context, cfg *Config, rep *Report, t *target) error {
	tmpl := cfg.CodeInterpreterTemplate
	if tmpl == "" {
		tmpl = "code-interpreter-v1"
	}
	var createFirst, warm Samples
	for i := range cfg.Creates {
		t0 := time.Now()
		sb, err := t.c.Create(ctx, tmpl, 300)
		if err != nil {
			if i == 0 && strings.Contains(err.Error(), "404") {
				rep.Notes = append(rep.Notes, fmt.Sprintf("%s: no %s template on the server: codeinterp skipped", t.rt, tmpl))
				return nil
			}
			return err
		}
		text, err := t.c.RunCode(ctx, sb, "1+1")
		if err == nil && text != "2" {
			err = fmt.Errorf("runCode('1+1') = %q", text)
		}
		if err == nil {
			createFirst = append(createFirst, time.Since(t0))
		}
		if err == nil && i == 0 {
			if _, err = t.c.RunCode(ctx, sb, "x = 0"); err == nil {
				for range cfg.Execs {
					t1 := time.Now()
					if _, err = t.c.RunCode(ctx, sb, "x += 1"); err != nil {
						break
					}
					warm = append(warm, time.Since(t1))
				}
			}
		}
		if kerr := t.c.Kill(ctx, sb.ID); err == nil {
			err = kerr
		}
		if err != nil {
			return err
		}
	}
	rep.add(msResult("codeinterp.create_first_run", t.rt, t.accel, createFirst))
	rep.add(msResult("codeinterp.run_warm", t.rt, t.accel, warm))
	return nil
}
