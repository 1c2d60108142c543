// Command test-registry serves an OCI registry for the end-to-end tests,
// which have no internet: it starts go-containerregistry's in-memory
// registry on a free loopback port, pushes to it a single-layer image of
// the base template's root filesystem minus what Cocoon adds when it
// imports an image (envd, cocoon-init and the `user` account), prints the
// image's reference as one line on stdout, and serves until stdin closes
// or it gets SIGTERM or SIGINT.
//
//	test-registry --data-dir /var/lib/cocoon [--rootfs DIR] [--env K=V]...
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/cocoon-run/cocoon/internal/template/base"
	"github.com/cocoon-run/cocoon/internal/template/guest"
	"github.com/cocoon-run/cocoon/internal/template/oci/ocitest"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("test-registry: ")
	var (
		dataDir = flag.String("data-dir", "/var/lib/cocoon", "Cocoon data dir whose current base template is the image's source")
		tree    = flag.String("rootfs", "", "root filesystem tree to make the image of (default: the base template's, from --data-dir)")
		listen  = flag.String("listen", "127.0.0.1:0", "address to serve the registry on")
		repo    = flag.String("repo", "cocoon-test/base:1", "repository and tag to push the image as")
		env     []string
	)
	flag.Func("env", "KEY=VALUE of the image's configuration (repeatable)", func(s string) error {
		if !strings.Contains(s, "=") {
			return fmt.Errorf("%q is not KEY=VALUE", s)
		}
		env = append(env, s)
		return nil
	})
	flag.Parse()
	if err := run(*dataDir, *tree, *listen, *repo, env); err != nil {
		log.Fatal(err)
	}
}

func run(dataDir, tree, listen, repo string, env []string) error {
	if tree == "" {
		var err error
		if tree, err = baseRootfs(dataDir); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{Handler: ocitest.Handler("", "", nil), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	start := time.Now()
	img, size, err := treeImage(tree, env)
	if err != nil {
		return err
	}
	ref := ln.Addr().String() + "/" + repo
	if err := ocitest.Push(ref, img, authn.Anonymous); err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return fmt.Errorf("digest: %w", err)
	}
	log.Printf("pushed %s (%s, %d MiB compressed) of %s in %.1fs", ref, digest, size>>20, tree, time.Since(start).Seconds())
	fmt.Println(ref)

	// Serve until stdin closes (the test ended) or a signal.
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	select {
	case <-ctx.Done():
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// baseRootfs is the root filesystem tree of the current build of the base
// template in dataDir (the build `cocoon template build base` recorded).
func baseRootfs(dataDir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "templates", base.Name, "current"))
	if err != nil {
		return "", fmt.Errorf("find the base template (pass --rootfs or build it): %w", err)
	}
	t, err := base.Load(strings.TrimSpace(string(b)))
	if err != nil {
		return "", err
	}
	return t.RootfsDir, nil
}

// treeImage is a one-layer image of tree without Cocoon's guest pieces,
// so that importing it must add them; env is its configured environment.
func treeImage(tree string, env []string) (v1.Image, int64, error) {
	skip := map[string]bool{
		strings.TrimPrefix(guest.EnvdPath, "/"): true,
		strings.TrimPrefix(guest.InitPath, "/"): true,
		"home/user":                             true,
		"etc/sudoers.d/user":                    true,
	}
	dropUser := func(b []byte) []byte {
		var out []byte
		for _, line := range bytes.SplitAfter(b, []byte("\n")) {
			if !bytes.HasPrefix(line, []byte("user:")) {
				out = append(out, line...)
			}
		}
		return out
	}
	rewrite := map[string]func([]byte) []byte{}
	for _, f := range []string{"etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"} {
		rewrite[f] = dropUser
	}
	layer, err := ocitest.TreeLayer(tree, ocitest.TreeOptions{Skip: func(rel string) bool { return skip[rel] }, Rewrite: rewrite})
	if err != nil {
		return nil, 0, err
	}
	size, err := layer.Size()
	if err != nil {
		return nil, 0, fmt.Errorf("layer size: %w", err)
	}
	cfg := v1.Config{
		Env: append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, env...),
		Cmd: []string{"/bin/bash"},
	}
	img, err := ocitest.Image(cfg, layer)
	if err != nil {
		return nil, 0, err
	}
	return img, size, nil
}
