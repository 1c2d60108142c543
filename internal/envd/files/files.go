// Package files implements envd's plain-HTTP file transfer endpoint, /files:
// GET streams a file, POST writes one or more files from a multipart form or
// a raw (optionally gzip-compressed) body. Uploads land in a temporary file
// beside the target and are renamed into place only when complete, so a
// failed upload never leaves a partial file.
package files

import (
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/cocoon-run/cocoon/internal/envd/filesystem"
	"github.com/cocoon-run/cocoon/internal/envd/identity"
	"github.com/cocoon-run/cocoon/internal/envd/session"
)

// MetadataHeaderPrefix marks request headers stored as file metadata.
const MetadataHeaderPrefix = "X-Metadata-"

// copyBufSize is the chunk size of uploads: large enough to keep syscalls
// per byte low, small enough to keep envd's footprint flat.
const copyBufSize = 256 << 10

// Handler serves /files.
type Handler struct {
	sess *session.Session
	log  *slog.Logger
	bufs sync.Pool
}

// New returns the /files handler. Authorization (token or signature) is
// checked by the caller; see Authorized.
func New(sess *session.Session, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.Default()
	}
	h := &Handler{sess: sess, log: log}
	h.bufs.New = func() any { b := make([]byte, copyBufSize); return &b }
	return h
}

// WrittenFile is one element of a POST /files reply.
type WrittenFile struct {
	Path string `json:"path"`
	Name string `json:"name"`
	Type string `json:"type"`
}

// httpError is an error with the status it answers with.
type httpError struct {
	status int
	err    error
}

func (e *httpError) Error() string { return e.err.Error() }
func (e *httpError) Unwrap() error { return e.err }

func errStatus(status int, format string, args ...any) error {
	return &httpError{status: status, err: fmt.Errorf(format, args...)}
}

// WriteError writes the JSON error body E2B clients expect.
func WriteError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Del("Content-Length")
	w.Header().Del("Content-Disposition")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}{status, msg})
}

// statusOf maps an error to an HTTP status.
func statusOf(err error) int {
	var he *httpError
	switch {
	case errors.As(err, &he):
		return he.status
	case errors.Is(err, fs.ErrNotExist):
		return http.StatusNotFound
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EROFS):
		return http.StatusForbidden
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return http.StatusInsufficientStorage
	case errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EISDIR),
		errors.Is(err, syscall.ENAMETOOLONG), errors.Is(err, syscall.EINVAL):
		return http.StatusBadRequest
	default:
		return http.StatusInternalServerError
	}
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := statusOf(err)
	if status >= 500 {
		h.log.Error("files request failed", "method", r.Method, "path", r.URL.Query().Get("path"), "err", err)
	}
	WriteError(w, status, err.Error())
}

// ServeHTTP dispatches GET and POST.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		h.download(w, r)
	case http.MethodPost:
		h.upload(w, r)
	default:
		w.Header().Set("Allow", "GET, HEAD, POST")
		WriteError(w, http.StatusMethodNotAllowed, "method not allowed")
	}
}

func (h *Handler) user(r *http.Request) (*identity.User, error) {
	u, err := identity.Resolve(r.Header, r.URL.Query().Get("username"), h.sess.DefaultUser())
	if err != nil {
		return nil, errStatus(http.StatusBadRequest, "resolve user: %w", err)
	}
	return u, nil
}

func (h *Handler) download(w http.ResponseWriter, r *http.Request) {
	u, err := h.user(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	q := r.URL.Query().Get("path")
	if q == "" {
		h.fail(w, r, errStatus(http.StatusBadRequest, "path is required"))
		return
	}
	p := u.Abs(q)
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			err = errStatus(http.StatusNotFound, "file %s not found", p)
		}
		h.fail(w, r, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		h.fail(w, r, fmt.Errorf("stat %s: %w", p, err))
		return
	}
	if fi.IsDir() {
		h.fail(w, r, errStatus(http.StatusBadRequest, "%s is a directory", p))
		return
	}
	// Pipes, devices, and the files of /proc and /sys, which say size 0
	// and may not seek to their end (ServeContent answered those 500
	// "seeker can't seek"): no size, no ranges; just stream. A file that
	// is really empty streams nothing, as it should.
	if !fi.Mode().IsRegular() || fi.Size() == 0 {
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = io.Copy(w, f)
		return
	}
	w.Header().Set("Content-Disposition", mime.FormatMediaType("inline", map[string]string{"filename": fi.Name()}))
	// ServeContent streams with sendfile(2) on plain connections and serves ranges.
	http.ServeContent(w, r, fi.Name(), fi.ModTime(), f)
}

func (h *Handler) upload(w http.ResponseWriter, r *http.Request) {
	u, err := h.user(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	md := metadata(r.Header)
	target := r.URL.Query().Get("path")
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))

	var written []WrittenFile
	switch ct {
	case "multipart/form-data":
		written, err = h.uploadMultipart(r, u, target, md)
	default:
		// application/octet-stream and anything else is a raw body.
		if target == "" {
			err = errStatus(http.StatusBadRequest, "path is required for a raw upload")
			break
		}
		var body io.Reader = r.Body
		if strings.EqualFold(strings.TrimSpace(r.Header.Get("Content-Encoding")), "gzip") {
			zr, zerr := gzip.NewReader(r.Body)
			if zerr != nil {
				err = errStatus(http.StatusBadRequest, "read gzip body: %w", zerr)
				break
			}
			defer zr.Close()
			body = zr
		}
		var wf WrittenFile
		wf, err = h.writeFile(u, u.Abs(target), body, md)
		written = []WrittenFile{wf}
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(written)
}

func (h *Handler) uploadMultipart(r *http.Request, u *identity.User, target string, md map[string]string) ([]WrittenFile, error) {
	mr, err := r.MultipartReader()
	if err != nil {
		return nil, errStatus(http.StatusBadRequest, "read multipart body: %w", err)
	}
	var written []WrittenFile
	for {
		part, err := mr.NextRawPart() // raw: no implicit quoted-printable decoding
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, errStatus(http.StatusBadRequest, "read multipart body: %w", err)
		}
		name, filename := partNames(part)
		if name != "file" {
			part.Close()
			continue
		}
		var dst string
		switch {
		case target == "" && filename == "":
			part.Close()
			return nil, errStatus(http.StatusBadRequest, "part has no filename and no path was given")
		case target == "":
			dst = u.Abs(filename)
		default:
			dst = u.Abs(target)
			// A directory target receives the part under its own name.
			if fi, err := os.Stat(dst); err == nil && fi.IsDir() && filename != "" {
				dst = filepath.Join(dst, filepath.Base(filename))
			}
		}
		wf, err := h.writeFile(u, dst, part, md)
		part.Close()
		if err != nil {
			return nil, err
		}
		written = append(written, wf)
	}
	if len(written) == 0 {
		return nil, errStatus(http.StatusBadRequest, `no part named "file" in the form`)
	}
	return written, nil
}

// partNames reads the form name and the unmodified filename of a part:
// multipart.Part.FileName strips directories, but clients send full paths.
func partNames(p *multipart.Part) (name, filename string) {
	_, params, err := mime.ParseMediaType(p.Header.Get("Content-Disposition"))
	if err != nil {
		return p.FormName(), ""
	}
	return params["name"], params["filename"]
}

// metadata collects X-Metadata-<key> headers, keys lowercased (header names
// are case-insensitive, so no other case survives proxies reliably).
func metadata(hdr http.Header) map[string]string {
	var md map[string]string
	for k, vs := range hdr {
		key, ok := strings.CutPrefix(k, MetadataHeaderPrefix)
		if !ok || key == "" || len(vs) == 0 {
			continue
		}
		if md == nil {
			md = map[string]string{}
		}
		md[strings.ToLower(key)] = vs[0]
	}
	return md
}

// writeFile streams src into dst through a temporary file in dst's
// directory, owned by u, and renames it into place once complete.
func (h *Handler) writeFile(u *identity.User, dst string, src io.Reader, md map[string]string) (WrittenFile, error) {
	dir := filepath.Dir(dst)
	if err := filesystem.MkdirAll(dir, int(u.UID), int(u.GID)); err != nil {
		return WrittenFile{}, fmt.Errorf("create parent of %s: %w", dst, err)
	}
	mode := fs.FileMode(0o644)
	if fi, err := os.Lstat(dst); err == nil {
		if fi.IsDir() {
			return WrittenFile{}, errStatus(http.StatusBadRequest, "%s is a directory", dst)
		}
		if fi.Mode().IsRegular() {
			mode = fi.Mode().Perm() // overwriting keeps the permissions
		}
	}
	tmp, err := os.CreateTemp(dir, filesystem.UploadTempPattern(filepath.Base(dst)))
	if err != nil {
		return WrittenFile{}, fmt.Errorf("create temporary file for %s: %w", dst, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()

	buf := h.bufs.Get().(*[]byte)
	// Hide *os.File's ReadFrom so our buffer, not a 32 KiB one, is used.
	_, err = io.CopyBuffer(struct{ io.Writer }{tmp}, src, *buf)
	h.bufs.Put(buf)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) { // the write side failed (disk full…)
			return WrittenFile{}, fmt.Errorf("write %s: %w", dst, err)
		}
		return WrittenFile{}, errStatus(http.StatusBadRequest, "read upload of %s: %w", dst, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		return WrittenFile{}, fmt.Errorf("chmod %s: %w", dst, err)
	}
	if err := tmp.Chown(int(u.UID), int(u.GID)); err != nil {
		return WrittenFile{}, fmt.Errorf("chown %s: %w", dst, err)
	}
	if len(md) > 0 {
		if err := filesystem.SetMetadata(tmp, md); err != nil {
			h.log.Warn("upload metadata not stored", "path", dst, "err", err)
		}
	}
	if err := tmp.Close(); err != nil { // reports delayed write errors (NFS, quota)
		return WrittenFile{}, fmt.Errorf("close %s: %w", dst, err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return WrittenFile{}, fmt.Errorf("rename into %s: %w", dst, err)
	}
	ok = true
	return WrittenFile{Path: dst, Name: filepath.Base(dst), Type: "file"}, nil
}
