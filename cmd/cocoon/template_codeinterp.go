package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cocoon-run/cocoon/internal/template/codeinterp"
	"github.com/cocoon-run/cocoon/internal/template/dockerfile"
	"github.com/cocoon-run/cocoon/internal/template/steps"
)

// codeInterpreterArg is the argument of `cocoon template build
// code-interpreter`.
const codeInterpreterArg = "code-interpreter"

// runCodeInterpreterBuild builds code-interpreter-base, -deps and -v1 in
// turn on a running server (the Dockerfiles of internal/template/codeinterp,
// with binary as the server). A rebuild with
// unchanged inputs hits the server's cache for both.
func runCodeInterpreterBuild(ctx context.Context, f *customFlags, binary string, out, errOut io.Writer) error {
	if f.apiKey == "" {
		return errors.New("no API key: pass --api-key or set E2B_API_KEY")
	}
	if binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		binary = filepath.Join(filepath.Dir(exe), codeinterp.BinaryName)
	}
	if _, err := os.Stat(binary); err != nil {
		return fmt.Errorf("no code-interpreter binary at %s: build it with CGO_ENABLED=0 go build ./cmd/code-interpreter, or pass --code-interpreter PATH", binary)
	}
	ctxDir, err := os.MkdirTemp("", "cocoon-ci-build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(ctxDir)
	if err := linkOrCopy(binary, filepath.Join(ctxDir, codeinterp.BinaryName)); err != nil {
		return err
	}
	start := time.Now()
	for _, t := range []struct{ name, dockerfile string }{
		{codeinterp.BaseName, codeinterp.BaseDockerfile},
		{codeinterp.DepsName, codeinterp.DepsDockerfile},
		{codeinterp.Name, codeinterp.Dockerfile},
	} {
		res, err := dockerfile.Parse(strings.NewReader(t.dockerfile), dockerfile.Options{IsTemplate: func(ref string) bool {
			return ref == codeinterp.BaseName || ref == codeinterp.DepsName || dockerfile.DefaultIsTemplate(ref)
		}})
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		spec, uploads, err := dockerfileRequest(res, ctxDir)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		if spec.Steps == nil {
			spec.Steps = []steps.Step{} // the API wants a list, even empty
		}
		spec.Force = f.force
		cpu, mem := f.cpuCount, f.memoryMB
		if cpu == 0 {
			cpu = codeinterp.DefaultVCPUs
		}
		if mem == 0 {
			mem = codeinterp.DefaultMemoryMB
		}
		b := &remoteBuild{apiURL: f.apiURL, apiKey: f.apiKey, name: t.name, cpuCount: cpu, memoryMB: mem,
			spec: spec, uploads: uploads, out: out, errOut: errOut}
		if err := b.run(ctx); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
	}
	fmt.Fprintf(out, "code interpreter templates built in %.1fs\n", time.Since(start).Seconds())
	return nil
}

// linkOrCopy hard-links src to dst, or copies it.
func linkOrCopy(src, dst string) error {
	if os.Link(src, dst) == nil {
		return nil
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}
