package api

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
)

// apiError is an error with the HTTP status it maps to. Handlers return it
// (or wrap it) so that one place writes the E2B error body.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func errorf(status int, msg string) error { return &apiError{status: status, msg: msg} }

// errorBody is E2B's error shape; the SDK reads code as well as the status.
type errorBody struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// writeJSON writes v with the given status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeError writes {code, message} for status.
func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, errorBody{Code: status, Message: msg})
}

// writeErr maps err to a response: an *apiError keeps its status and message;
// anything else is logged and reported as a 500 without internals.
func writeErr(w http.ResponseWriter, r *http.Request, logger *slog.Logger, err error) {
	var ae *apiError
	if errors.As(err, &ae) {
		writeError(w, ae.status, ae.msg)
		return
	}
	logger.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	writeError(w, http.StatusInternalServerError, "internal server error")
}

// noContent replies 204 without a body, which the SDK requires for empty 2xx.
func noContent(w http.ResponseWriter) { w.WriteHeader(http.StatusNoContent) }
