package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"

	apispec "github.com/cocoon-run/cocoon/api"
)

// loadSpec parses and validates the embedded OpenAPI document.
func loadSpec(ctx context.Context) (*openapi3.T, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(apispec.OpenAPI)
	if err != nil {
		return nil, fmt.Errorf("load openapi document: %w", err)
	}
	if err := doc.Validate(ctx); err != nil {
		return nil, fmt.Errorf("validate openapi document: %w", err)
	}
	return doc, nil
}

// route is one registered endpoint; the list of them is checked against the
// document in both directions (at start for this direction, in tests for both).
type route struct {
	method string
	path   string // OpenAPI path template; also the ServeMux pattern
}

// validator checks requests against the operation of their route. It runs
// after the body limit, so it only ever reads a bounded body.
type validator struct {
	doc   *openapi3.T
	route *routers.Route
}

func newValidator(doc *openapi3.T, method, path string) (*validator, error) {
	item := doc.Paths.Value(path)
	if item == nil {
		return nil, fmt.Errorf("route %s %s: path not in openapi document", method, path)
	}
	op := item.GetOperation(method)
	if op == nil {
		return nil, fmt.Errorf("route %s %s: method not in openapi document", method, path)
	}
	return &validator{doc: doc, route: &routers.Route{
		Spec: doc, Path: path, PathItem: item, Method: method, Operation: op,
	}}, nil
}

// validate returns a client-facing message when r does not match the
// operation. Authentication is done by our own middleware, not here.
func (v *validator) validate(r *http.Request) error {
	// Clients that send JSON without saying so (curl -d) are served as JSON.
	if r.ContentLength > 0 && r.Header.Get("Content-Type") == "" {
		r.Header.Set("Content-Type", "application/json")
	}
	params := map[string]string{}
	for _, p := range pathParamNames(v.route.Path) {
		params[p] = r.PathValue(p)
	}
	in := &openapi3filter.RequestValidationInput{
		Request:    r,
		PathParams: params,
		Route:      v.route,
		Options: &openapi3filter.Options{
			AuthenticationFunc:  openapi3filter.NoopAuthenticationFunc,
			SkipSettingDefaults: true,
		},
	}
	err := openapi3filter.ValidateRequest(r.Context(), in)
	if err == nil {
		return nil
	}
	return errorf(http.StatusBadRequest, validationMessage(err))
}

// validationMessage turns kin-openapi's verbose error into one line that
// names the offending field.
func validationMessage(err error) string {
	var re *openapi3filter.RequestError
	if errors.As(err, &re) {
		var se *openapi3.SchemaError
		if errors.As(re.Err, &se) {
			field := strings.Join(se.JSONPointer(), ".")
			where := "request body"
			if re.Parameter != nil {
				where = re.Parameter.In + " parameter " + re.Parameter.Name
			}
			if field != "" {
				return fmt.Sprintf("invalid %s: field %s: %s", where, field, se.Reason)
			}
			return fmt.Sprintf("invalid %s: %s", where, se.Reason)
		}
		if re.Parameter != nil {
			return fmt.Sprintf("invalid %s parameter %s: %s", re.Parameter.In, re.Parameter.Name, reason(re))
		}
		if re.RequestBody != nil {
			return "invalid request body: " + reason(re)
		}
		return re.Error()
	}
	return err.Error()
}

func reason(re *openapi3filter.RequestError) string {
	switch {
	case re.Err != nil && re.Reason != "":
		return re.Reason + ": " + re.Err.Error()
	case re.Err != nil:
		return re.Err.Error()
	case re.Reason != "":
		return re.Reason
	}
	return "invalid"
}

// pathParamNames returns the {names} in an OpenAPI path template.
func pathParamNames(path string) []string {
	var names []string
	for _, seg := range strings.Split(path, "/") {
		if strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") {
			names = append(names, strings.TrimSuffix(strings.TrimPrefix(seg, "{"), "}"))
		}
	}
	return names
}

// readBody reads at most limit bytes of r's body into memory and replaces
// the body with the buffered copy, so validation and the handler both read it.
func readBody(r *http.Request, limit int64) error {
	if r.Body == nil || r.Body == http.NoBody {
		return nil
	}
	if r.ContentLength > limit {
		return errorf(http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", limit))
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return errorf(http.StatusBadRequest, "read request body: "+err.Error())
	}
	if int64(len(b)) > limit {
		return errorf(http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", limit))
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.ContentLength = int64(len(b))
	return nil
}
