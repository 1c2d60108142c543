// Package codeinterp defines the code-interpreter-v1 template (the default
// template of E2B's code interpreter SDK) as three Dockerfiles built in turn
// on a running server: code-interpreter-base (base at the code
// interpreter's shape: a snapshot, no steps), code-interpreter-deps
// (Debian's Python data stack; slow, rarely changes) and
// code-interpreter-v1 (the server binary and its start and ready commands).
package codeinterp

import _ "embed"

// Names of the two templates.
const (
	Name     = "code-interpreter-v1"
	DepsName = "code-interpreter-deps"
	BaseName = "code-interpreter-base"
)

// The upstream shape: 2 vCPU, 2048 MiB.
const (
	DefaultVCPUs    = 2
	DefaultMemoryMB = 2048
)

// BinaryName is the server's file name in the build context (COPY source).
const BinaryName = "code-interpreter"

// BaseDockerfile builds BaseName, DepsDockerfile DepsName from it, and
// Dockerfile Name from that.
var (
	//go:embed base.Dockerfile
	BaseDockerfile string
	//go:embed deps.Dockerfile
	DepsDockerfile string
	//go:embed Dockerfile
	Dockerfile string
)
