package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cocoon-run/cocoon/internal/template/dockerfile"
	"github.com/cocoon-run/cocoon/internal/template/steps"
)

// Remote template builds: `cocoon template build -f Dockerfile --name x`
// (or `--image ref --name x`) sends a running server the same requests as
// the E2B SDK's Template builder (docs/e2b-wire.md): create the template,
// upload each COPY step's files as a tar.gz named by its hash, start the
// build with the steps, and follow its status and logs.

// remoteBuild is what a remote build needs.
type remoteBuild struct {
	apiURL, apiKey string
	name           string
	cpuCount       int
	memoryMB       int
	spec           steps.Spec
	uploads        map[string][]byte // filesHash → tar.gz
	out, errOut    io.Writer
	poll           time.Duration
}

// copyUpload is one COPY step's archive.
type copyUpload struct {
	hash string
	data []byte
}

// dockerfileRequest turns a parsed Dockerfile into the build request,
// archiving each COPY step's files from contextDir and naming them by hash.
func dockerfileRequest(res *dockerfile.Result, contextDir string) (steps.Spec, map[string][]byte, error) {
	spec := res.Spec
	spec.Steps = append([]steps.Step(nil), res.Spec.Steps...)
	uploads := map[string][]byte{}
	for _, c := range res.Copy {
		up, err := archiveSources(contextDir, c.Src, c.Dest)
		if err != nil {
			return steps.Spec{}, nil, fmt.Errorf("Dockerfile line %d: COPY %s: %w", c.Line, c.Src, err)
		}
		spec.Steps[c.Step].FilesHash = up.hash
		uploads[up.hash] = up.data
	}
	return spec, uploads, nil
}

// archiveSources makes the tar.gz of src (a path or glob relative to the
// context) with entry names relative to the context, as the build's COPY
// expects them. The hash covers the source, the destination and every
// entry's name, type, mode, link target and contents (not times).
func archiveSources(contextDir, src, dest string) (copyUpload, error) {
	root, err := filepath.Abs(contextDir)
	if err != nil {
		return copyUpload{}, err
	}
	matches := []string{filepath.Join(root, filepath.FromSlash(src))}
	if strings.ContainsAny(src, "*?[") {
		if matches, err = filepath.Glob(matches[0]); err != nil {
			return copyUpload{}, err
		}
	}
	if len(matches) == 0 {
		return copyUpload{}, fmt.Errorf("no file matches %q in %s", src, contextDir)
	}
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	h := sha256.New()
	fmt.Fprintf(h, "COPY\x00%s\x00%s\x00", src, dest)
	for _, m := range matches {
		err := filepath.WalkDir(m, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(root, p)
			if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
				return fmt.Errorf("%s is outside the build context", p)
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			link := ""
			if fi.Mode()&fs.ModeSymlink != 0 {
				if link, err = os.Readlink(p); err != nil {
					return err
				}
			}
			hdr, err := tar.FileInfoHeader(fi, link)
			if err != nil {
				return err
			}
			hdr.Name = filepath.ToSlash(rel)
			if fi.IsDir() {
				hdr.Name += "/"
			}
			hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
			hdr.Format = tar.FormatPAX
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			fmt.Fprintf(h, "%s\x00%c\x00%o\x00%s\x00%d\x00", hdr.Name, hdr.Typeflag, hdr.Mode, hdr.Linkname, hdr.Size)
			if !fi.Mode().IsRegular() {
				return nil
			}
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.Copy(io.MultiWriter(tw, h), f)
			return err
		})
		if err != nil {
			return copyUpload{}, err
		}
	}
	if err := tw.Close(); err != nil {
		return copyUpload{}, err
	}
	if err := gz.Close(); err != nil {
		return copyUpload{}, err
	}
	return copyUpload{hash: hex.EncodeToString(h.Sum(nil)), data: buf.Bytes()}, nil
}

// apiError is the api's error body.
type apiError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func (b *remoteBuild) call(ctx context.Context, method, u string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(raw)
	}
	if !strings.HasPrefix(u, "http") {
		u = strings.TrimRight(b.apiURL, "/") + u
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	req.Header.Set("X-API-KEY", b.apiKey)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode >= 300 {
		var e apiError
		if json.Unmarshal(raw, &e) == nil && e.Message != "" {
			return fmt.Errorf("%s %s: %d %s", method, req.URL.Path, resp.StatusCode, e.Message)
		}
		return fmt.Errorf("%s %s: %s", method, req.URL.Path, resp.Status)
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("%s %s: decode: %w", method, req.URL.Path, err)
		}
	}
	return nil
}

// teamTemplates lists the names and IDs of the templates the key sees.
func (b *remoteBuild) teamTemplates(ctx context.Context) (map[string]bool, error) {
	var list []struct {
		TemplateID string   `json:"templateID"`
		Aliases    []string `json:"aliases"`
		Names      []string `json:"names"`
	}
	if err := b.call(ctx, http.MethodGet, "/templates", nil, &list); err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, t := range list {
		out[t.TemplateID] = true
		for _, n := range append(t.Aliases, t.Names...) {
			out[n] = true
		}
	}
	return out, nil
}

type buildLog struct {
	Timestamp time.Time `json:"timestamp"`
	Level     string    `json:"level"`
	Message   string    `json:"message"`
	Step      string    `json:"step"`
}

type buildStatus struct {
	Status     string     `json:"status"`
	LogEntries []buildLog `json:"logEntries"`
	Reason     *struct {
		Message string `json:"message"`
		Step    string `json:"step"`
	} `json:"reason"`
}

// run creates the template, uploads the files, starts the build and
// follows it to the end.
func (b *remoteBuild) run(ctx context.Context) error {
	start := time.Now()
	var created struct {
		TemplateID string `json:"templateID"`
		BuildID    string `json:"buildID"`
	}
	req := map[string]any{"name": b.name}
	if b.cpuCount > 0 {
		req["cpuCount"] = b.cpuCount
	}
	if b.memoryMB > 0 {
		req["memoryMB"] = b.memoryMB
	}
	if err := b.call(ctx, http.MethodPost, "/v3/templates", req, &created); err != nil {
		return err
	}
	fmt.Fprintf(b.errOut, "template %s, build %s\n", created.TemplateID, created.BuildID)
	for hash, data := range b.uploads {
		var link struct {
			Present bool              `json:"present"`
			URL     string            `json:"url"`
			Headers map[string]string `json:"headers"`
		}
		if err := b.call(ctx, http.MethodGet, "/templates/"+created.TemplateID+"/files/"+hash, nil, &link); err != nil {
			return err
		}
		if link.Present {
			fmt.Fprintf(b.errOut, "files %.12s already uploaded\n", hash)
			continue
		}
		fmt.Fprintf(b.errOut, "uploading files %.12s (%d bytes)\n", hash, len(data))
		if err := upload(ctx, link.URL, link.Headers, data); err != nil {
			return err
		}
	}
	if err := b.call(ctx, http.MethodPost, "/v2/templates/"+created.TemplateID+"/builds/"+created.BuildID, b.spec, nil); err != nil {
		return err
	}
	// Follow the build; keep each step's output for the failure report.
	byStep := map[string][]string{}
	offset := 0
	tick := b.poll
	if tick <= 0 {
		tick = 500 * time.Millisecond
	}
	for {
		var st buildStatus
		q := "/templates/" + created.TemplateID + "/builds/" + created.BuildID + "/status?logsOffset=" + strconv.Itoa(offset)
		if err := b.call(ctx, http.MethodGet, q, nil, &st); err != nil {
			return err
		}
		offset += len(st.LogEntries)
		for _, e := range st.LogEntries {
			prefix := "     "
			if e.Step != "" {
				prefix = fmt.Sprintf("[%3s]", e.Step)
				byStep[e.Step] = append(byStep[e.Step], e.Message)
			}
			fmt.Fprintf(b.errOut, "%5.1fs %s %s\n", time.Since(start).Seconds(), prefix, e.Message)
		}
		switch st.Status {
		case "ready":
			fmt.Fprintf(b.out, "template %s (%s) ready in %.1fs\n", b.name, created.TemplateID, time.Since(start).Seconds())
			return nil
		case "error":
			msg := "build failed"
			if st.Reason != nil {
				msg = st.Reason.Message
				if out := byStep[st.Reason.Step]; st.Reason.Step != "" && len(out) > 0 {
					if len(out) > 30 {
						out = out[len(out)-30:]
					}
					fmt.Fprintf(b.errOut, "--- output of step %s (last %d lines) ---\n%s\n---\n", st.Reason.Step, len(out), strings.Join(out, "\n"))
				}
			}
			return errors.New(msg)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(tick):
		}
	}
}

func upload(ctx context.Context, u string, headers map[string]string, data []byte) error {
	if _, err := url.Parse(u); err != nil {
		return fmt.Errorf("upload link: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, bytes.NewReader(data))
	if err != nil {
		return err
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	req.ContentLength = int64(len(data))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e apiError
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(raw, &e) == nil && e.Message != "" {
			return fmt.Errorf("upload: %d %s", resp.StatusCode, e.Message)
		}
		return fmt.Errorf("upload: %s", resp.Status)
	}
	return nil
}

// customFlags are `template build`'s flags for remote builds.
type customFlags struct {
	file, image, name, contextDir string
	apiURL, apiKey                string
	cpuCount, memoryMB            int
	buildArgs                     []string
	username, password            string
	force                         bool
}

func (f *customFlags) remote() bool { return f.file != "" || f.image != "" }

// runCustomBuild is `cocoon template build -f Dockerfile|--image ref --name x`.
func runCustomBuild(ctx context.Context, f *customFlags, out, errOut io.Writer) error {
	if f.name == "" {
		return errors.New("--name is required with -f or --image")
	}
	if f.file != "" && f.image != "" {
		return errors.New("-f and --image are exclusive")
	}
	if f.apiKey == "" {
		return errors.New("no API key: pass --api-key or set E2B_API_KEY")
	}
	b := &remoteBuild{apiURL: f.apiURL, apiKey: f.apiKey, name: f.name, cpuCount: f.cpuCount, memoryMB: f.memoryMB, out: out, errOut: errOut}
	if f.image != "" {
		b.spec = steps.Spec{FromImage: f.image, Steps: []steps.Step{}}
	} else {
		args := map[string]string{}
		for _, a := range f.buildArgs {
			k, v, ok := strings.Cut(a, "=")
			if !ok {
				v = os.Getenv(k)
			}
			args[k] = v
		}
		known, err := b.teamTemplates(ctx)
		if err != nil {
			return err
		}
		df, err := os.Open(f.file)
		if err != nil {
			return err
		}
		defer df.Close()
		res, err := dockerfile.Parse(df, dockerfile.Options{BuildArgs: args, IsTemplate: func(ref string) bool {
			return known[ref] || dockerfile.DefaultIsTemplate(ref)
		}})
		if err != nil {
			return err
		}
		for _, n := range res.Notes {
			fmt.Fprintln(errOut, "note:", n)
		}
		dir := f.contextDir
		if dir == "" {
			dir = filepath.Dir(f.file)
		}
		if b.spec, b.uploads, err = dockerfileRequest(res, dir); err != nil {
			return err
		}
	}
	if f.username != "" || f.password != "" {
		b.spec.FromImageRegistry = &steps.Registry{Type: "registry", Username: f.username, Password: f.password}
	}
	b.spec.Force = f.force
	return b.run(ctx)
}
