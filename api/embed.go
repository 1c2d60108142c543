// Package apispec embeds Cocoon's OpenAPI document, the contract of the
// E2B-compatible REST API, so the api can serve it and validate against it.
package apispec

import _ "embed"

// OpenAPI is the YAML text of api/openapi.yaml.
//
//go:embed openapi.yaml
var OpenAPI []byte
