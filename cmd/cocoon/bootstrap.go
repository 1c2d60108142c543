package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cocoon-run/cocoon/internal/runtime"
	"github.com/cocoon-run/cocoon/internal/store"
)

// Identities the server creates at first start.
const (
	systemTeamID   = "system"
	defaultTeamID  = "default"
	baseTemplateID = "base"
)

// loadOrCreateSecret returns the secret in path, creating a random one
// (mode 0600) when the file does not exist.
func loadOrCreateSecret(path string) (secret string, created bool, err error) {
	if b, err := os.ReadFile(path); err == nil {
		if s := strings.TrimSpace(string(b)); s != "" {
			return s, false, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", false, fmt.Errorf("read %s: %w", path, err)
	}
	buf := make([]byte, 32)
	if _, err := rand.Read(buf); err != nil {
		return "", false, err
	}
	s := hex.EncodeToString(buf)
	if err := writeFileAtomic(path, []byte(s+"\n"), 0o600); err != nil {
		return "", false, err
	}
	return s, true, nil
}

func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// bootstrap creates what a first start needs: the system team owning the
// public base template, a default team with an API key written to
// <data>/sdk.env, and the record of the current base build.
func bootstrap(ctx context.Context, st store.Store, dataDir, apiURL, sandboxURL string, tmpl *runtime.Template, runtimes []string, out io.Writer) error {
	now := time.Now().UTC()
	for _, t := range []store.Team{{ID: systemTeamID, Name: "system", CreatedAt: now}, {ID: defaultTeamID, Name: "default", CreatedAt: now}} {
		if _, err := st.GetTeam(ctx, t.ID); errors.Is(err, store.ErrNotFound) {
			if err := st.CreateTeam(ctx, t); err != nil && !errors.Is(err, store.ErrConflict) {
				return fmt.Errorf("create team %s: %w", t.ID, err)
			}
		} else if err != nil {
			return fmt.Errorf("get team %s: %w", t.ID, err)
		}
	}

	sdkEnv := filepath.Join(dataDir, "sdk.env")
	if _, err := os.Stat(sdkEnv); errors.Is(err, os.ErrNotExist) {
		key, hash, display := store.GenerateAPIKey()
		if err := st.CreateAPIKey(ctx, store.APIKey{
			ID: store.NewID(16), TeamID: defaultTeamID, Name: "default", Hash: hash, Prefix: display, CreatedAt: now,
		}); err != nil {
			return fmt.Errorf("create default key: %w", err)
		}
		env := fmt.Sprintf("# Written by `cocoon server` at first start: `source` this file to point the E2B SDK at Cocoon.\n"+
			"export E2B_API_KEY=%s\nexport E2B_API_URL=%s\nexport E2B_SANDBOX_URL=%s\n", key, apiURL, sandboxURL)
		if err := writeFileAtomic(sdkEnv, []byte(env), 0o600); err != nil {
			return err
		}
		fmt.Fprintf(out, "cocoon: created team %q and its API key; wrote E2B_API_KEY, E2B_API_URL and E2B_SANDBOX_URL to %s (source it)\n", defaultTeamID, sdkEnv)
	}
	if tmpl == nil {
		return nil
	}
	return registerTemplate(ctx, st, tmpl, runtimes)
}

// registerTemplate records the base template build that new sandboxes use.
func registerTemplate(ctx context.Context, st store.Store, tmpl *runtime.Template, runtimes []string) error {
	now := time.Now().UTC()
	t, err := st.GetTemplate(ctx, baseTemplateID)
	if errors.Is(err, store.ErrNotFound) {
		t = store.Template{ID: baseTemplateID, TeamID: systemTeamID, Name: "base", Aliases: []string{"base"}, Public: true,
			CPUCount: tmpl.VCPUs, MemoryMB: tmpl.MemoryMB, DiskMB: tmpl.DiskMB, CreatedAt: now}
		if err := st.CreateTemplate(ctx, t); err != nil {
			return fmt.Errorf("record base template: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("get base template: %w", err)
	}
	builds, err := st.ListBuilds(ctx, baseTemplateID)
	if err != nil {
		return fmt.Errorf("list base builds: %w", err)
	}
	for _, b := range builds {
		if b.ID == tmpl.ID && b.Status == store.BuildReady && slices.Equal(b.Runtimes, runtimes) {
			return nil
		}
	}
	b := store.TemplateBuild{
		ID: tmpl.ID, TemplateID: baseTemplateID, Status: store.BuildReady, Runtimes: runtimes,
		ArtifactDir: tmpl.Dir, EnvdVersion: "0.6.4", CreatedAt: now, FinishedAt: now,
	}
	if err := st.CreateBuild(ctx, b); errors.Is(err, store.ErrConflict) {
		return st.UpdateBuild(ctx, b)
	} else if err != nil {
		return fmt.Errorf("record base build: %w", err)
	}
	return nil
}
