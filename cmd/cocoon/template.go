package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cocoon-run/cocoon/internal/template/base"
)

// newTemplateCmd is `cocoon template`: building and managing templates.
func newTemplateCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "template",
		Short: "Build and manage sandbox templates",
	}
	cmd.AddCommand(newTemplateBuildCmd(g))
	return cmd
}

func newTemplateBuildCmd(g *globalFlags) *cobra.Command {
	opts := base.Options{}
	var (
		verbose  bool
		runtimes []string
		nf       nodeFlags
		cf       customFlags
		ciBinary string
	)
	cmd := &cobra.Command{
		Use:   "build base | build code-interpreter | build -f Dockerfile --name NAME | build --image REF --name NAME",
		Short: "Build the default template 'base' (Debian kernel, initramfs, debootstrapped rootfs with envd)",
		Long: `Build the default template 'base': Debian's cloud kernel, an initramfs,
and a Debian root filesystem (debootstrap from the host's apt mirror) with envd,
as an ext4 image and a directory, under <data-dir>/templates/base/<build id>/.
Every artifact is cached under <data-dir>/cache, so a rebuild with the same
inputs takes seconds. Needs root, debootstrap, e2fsprogs and busybox-static.

With -f Dockerfile (or --image REF) it builds a custom template on a running
server instead, as the E2B SDK's Template builder does: the Dockerfile becomes
build steps (FROM a template or an image, RUN, COPY, ENV, WORKDIR, USER, ARG,
CMD/ENTRYPOINT as the start command, HEALTHCHECK as the ready command), COPY
sources are uploaded from the build context, and the build's log is streamed.

"build code-interpreter" builds the code interpreter's templates on a running
server the same way: code-interpreter-deps (Debian's Python data stack on
base) and code-interpreter-v1 (the SDK's default template: the server on port
49999, snapshotted with a warm Python kernel), from internal/template/codeinterp,
with the code-interpreter binary beside cocoon (or --code-interpreter PATH).`,
		Args:      cobra.MaximumNArgs(1),
		ValidArgs: []string{base.Name, codeInterpreterArg},
		RunE: func(cmd *cobra.Command, args []string) error {
			if cf.remote() {
				if len(args) > 0 {
					return fmt.Errorf("-f/--image builds take no argument (the name is --name)")
				}
				return runCustomBuild(cmd.Context(), &cf, cmd.OutOrStdout(), cmd.ErrOrStderr())
			}
			if len(args) == 1 && args[0] == codeInterpreterArg {
				return runCodeInterpreterBuild(cmd.Context(), &cf, ciBinary, cmd.OutOrStdout(), cmd.ErrOrStderr())
			}
			if len(args) != 1 || args[0] != base.Name {
				if len(args) == 0 {
					return fmt.Errorf("name the template to build (%q), or build a custom one with -f Dockerfile --name NAME", base.Name)
				}
				return fmt.Errorf("unknown template %q: only %q can be built here", args[0], base.Name)
			}
			if opts.EnvdPath == "" {
				p, err := defaultEnvd()
				if err != nil {
					return err
				}
				opts.EnvdPath = p
			}
			opts.DataDir = g.dataDir
			errOut := cmd.ErrOrStderr()
			start := time.Now()
			opts.Progress = func(step string, percent int) {
				fmt.Fprintf(errOut, "[%3d%%] %5.1fs %s\n", percent, time.Since(start).Seconds(), step)
			}
			if verbose {
				opts.Log = errOut
			}
			t, err := base.Build(cmd.Context(), opts)
			if err != nil {
				return err
			}
			log := newLogger(errOut, false)
			n, err := openNode(cmd.Context(), g.dataDir, &nf, t, log)
			if err != nil {
				return err
			}
			names := n.names()
			if len(runtimes) > 0 {
				names = runtimes
			}
			if err := snapshotTemplate(cmd.Context(), n, t, names, func(msg string) {
				fmt.Fprintf(errOut, "[snap] %5.1fs %s\n", time.Since(start).Seconds(), msg)
			}); err != nil {
				return err
			}
			if err := setCurrentTemplate(g.dataDir, base.Name, t.Dir); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "template %s built in %.1fs\n", t.ID, time.Since(start).Seconds())
			fmt.Fprintf(out, "  dir     %s\n  kernel  %s\n  initrd  %s\n  image   %s (%d MiB)\n  rootfs  %s\n  shape   %d vCPU, %d MiB\n",
				t.Dir, t.Kernel, t.Initrd, t.RootfsImage, t.DiskMB, t.RootfsDir, t.VCPUs, t.MemoryMB)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.EnvdPath, "envd", "", "static envd binary to bake in (default: envd next to the cocoon binary)")
	f.IntVar(&opts.VCPUs, "vcpus", base.DefaultVCPUs, "vCPUs of the template")
	f.IntVar(&opts.MemoryMB, "memory", base.DefaultMemoryMB, "memory of the template, MiB")
	f.IntVar(&opts.DiskMB, "disk", base.DefaultDiskMB, "root disk size, MiB")
	f.StringVar(&opts.Mirror, "mirror", "", "Debian mirror (default: from the host's apt sources)")
	f.BoolVarP(&verbose, "verbose", "v", false, "show the tools' output (debootstrap)")
	f.StringSliceVar(&runtimes, "runtimes", nil, "runtimes to snapshot the template for (default: every runtime available here)")
	nf.register(cmd)
	f.StringVarP(&cf.file, "file", "f", "", "build a custom template from this Dockerfile on a running server (with --name)")
	f.StringVar(&cf.image, "image", "", "build a custom template from this OCI image on a running server (with --name)")
	f.StringVar(&cf.name, "name", "", "name of the custom template")
	f.StringVar(&cf.contextDir, "context", "", "build context of COPY (default: the Dockerfile's directory)")
	f.StringVar(&cf.apiURL, "api-url", envOr("E2B_API_URL", "http://127.0.0.1:3000"), "Cocoon api for -f/--image (E2B_API_URL)")
	f.StringVar(&cf.apiKey, "api-key", os.Getenv("E2B_API_KEY"), "API key for -f/--image (E2B_API_KEY)")
	f.IntVar(&cf.cpuCount, "cpu", 0, "vCPUs of the custom template (default: the base's)")
	f.IntVar(&cf.memoryMB, "memory-mb", 0, "memory of the custom template, MiB (default: the base's)")
	f.StringArrayVar(&cf.buildArgs, "build-arg", nil, "ARG value, NAME=value (repeatable)")
	f.StringVar(&cf.username, "registry-user", "", "user name for a private image registry")
	f.StringVar(&cf.password, "registry-password", os.Getenv("COCOON_REGISTRY_PASSWORD"), "password for a private image registry (COCOON_REGISTRY_PASSWORD)")
	f.BoolVar(&cf.force, "force", false, "rebuild every step, ignoring the cache")
	f.StringVar(&ciBinary, "code-interpreter", "", "code-interpreter server binary for `build code-interpreter` (default: beside the cocoon binary)")
	return cmd
}

// defaultEnvd finds envd installed beside the cocoon binary.
func defaultEnvd() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find envd: %w", err)
	}
	p := filepath.Join(filepath.Dir(exe), "envd")
	if _, err := os.Stat(p); err != nil {
		return "", errors.New("no envd beside the cocoon binary: pass --envd PATH (build it with CGO_ENABLED=0 go build ./cmd/envd)")
	}
	return p, nil
}

// currentTemplate is the file naming the build of a template that new
// sandboxes use.
func currentTemplatePath(dataDir, name string) string {
	return filepath.Join(dataDir, "templates", name, "current")
}

// setCurrentTemplate records dir as the current build of template name.
func setCurrentTemplate(dataDir, name, dir string) error {
	p := currentTemplatePath(dataDir, name)
	if err := os.WriteFile(p+".tmp", []byte(dir+"\n"), 0o644); err != nil {
		return fmt.Errorf("record current template: %w", err)
	}
	return os.Rename(p+".tmp", p)
}

// currentTemplate returns the directory of the current build of name.
func currentTemplate(dataDir, name string) (string, error) {
	b, err := os.ReadFile(currentTemplatePath(dataDir, name))
	if err != nil {
		return "", fmt.Errorf("template %q is not built: run `cocoon template build %s --data-dir %s`: %w", name, name, dataDir, err)
	}
	return strings.TrimSpace(string(b)), nil
}
