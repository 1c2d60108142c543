// Package codeinterp defines the code-interpreter-v1 template (the default
// template of E2B's code interpreter SDK) as two Dockerfiles built on a
// running server: code-interpreter-deps (Debian's Python data stack on the
// base template; slow, rarely changes) and code-interpreter-v1 (the server
// binary and its start and ready commands; seconds).
package codeinterp

import _ "embed"

// Names of the two templates.
const (
	Name     = "code-interpreter-v1"
	DepsName = "code-interpreter-deps"
)

// The upstream shape: 2 vCPU, 2048 MiB.
const (
	DefaultVCPUs    = 2
	DefaultMemoryMB = 2048
)

// BinaryName is the server's file name in the build context (COPY source).
const BinaryName = "code-interpreter"

// DepsDockerfile builds DepsName; Dockerfile builds Name from it.
var (
	//go:embed deps.Dockerfile
	DepsDockerfile string
	//go:embed Dockerfile
	Dockerfile string
)
