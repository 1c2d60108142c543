package codeinterp

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

//go:embed startup.py
var pythonStartup []byte

// kernelStartTimeout bounds a kernel's start (ipykernel with numpy, pandas
// and matplotlib imported: ≈ 1.5 s on a quiet host, 15 s at load average
// 18, and more than 60 s at load average 40 on this 2-core host).
const kernelStartTimeout = 3 * time.Minute

// Python is the Python language on ipykernel: python is the interpreter,
// tmp a private directory for connection files and the start-up script.
func Python(python, tmp string) (Language, error) {
	startup := filepath.Join(tmp, "startup.py")
	if err := os.WriteFile(startup, pythonStartup, 0o644); err != nil {
		return Language{}, fmt.Errorf("write python start-up: %w", err)
	}
	argv := []string{python, "-m", "ipykernel_launcher", "-f", "{connection_file}",
		"--HistoryManager.enabled=False", "--IPKernelApp.exec_files=" + startup}
	return Language{
		Start: func(ctx context.Context, dir string, env []string) (Kernel, error) {
			// debugpy (an ipykernel dependency) warns about frozen modules at every start.
			env = append(env[:len(env):len(env)], "PYDEVD_DISABLE_FILE_VALIDATION=1")
			k := newJupyterKernel(argv, dir, tmp, env)
			ctx, cancel := context.WithTimeout(ctx, kernelStartTimeout)
			defer cancel()
			if err := k.start(ctx); err != nil {
				return nil, err
			}
			return k, nil
		},
		SetEnv: func(env map[string]string) string {
			b, _ := json.Marshal(env)
			return "import os as __o, json as __j\n__o.environ.update(__j.loads(" + strconv.Quote(string(b)) + "))\ndel __o, __j"
		},
	}, nil
}

// Available reports whether a program is on PATH.
func Available(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}
