package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// adminFlags locate the api and authenticate as admin.
type adminFlags struct {
	apiURL string
	token  string
}

func (a *adminFlags) register(cmd *cobra.Command) {
	def := os.Getenv("COCOON_API_URL")
	if def == "" {
		def = "http://127.0.0.1:3000"
	}
	cmd.PersistentFlags().StringVar(&a.apiURL, "api-url", def, "URL of the Cocoon api (also COCOON_API_URL)")
	cmd.PersistentFlags().StringVar(&a.token, "admin-token", os.Getenv("COCOON_ADMIN_TOKEN"),
		"admin token (also COCOON_ADMIN_TOKEN; default: read <data-dir>/admin.token)")
}

// adminClient calls the api's /admin endpoints.
type adminClient struct {
	base  string
	token string
	http  *http.Client
}

func newAdminClient(g *globalFlags, a *adminFlags) (*adminClient, error) {
	tok := a.token
	if tok == "" {
		b, err := os.ReadFile(filepath.Join(g.dataDir, "admin.token"))
		if err != nil {
			return nil, fmt.Errorf("no admin token: pass --admin-token, set COCOON_ADMIN_TOKEN, or make %s readable: %w",
				filepath.Join(g.dataDir, "admin.token"), err)
		}
		tok = strings.TrimSpace(string(b))
	}
	return &adminClient{base: strings.TrimRight(a.apiURL, "/"), token: tok, http: &http.Client{Timeout: 30 * time.Second}}, nil
}

// do sends body (if any) as JSON and decodes a JSON reply into out (if any).
func (c *adminClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("X-Admin-Token", c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("read reply: %w", err)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(b, &e) == nil && e.Message != "" {
			return fmt.Errorf("%s %s: %d: %s", method, path, resp.StatusCode, e.Message)
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode reply: %w", err)
		}
	}
	return nil
}

type adminTeam struct {
	TeamID    string    `json:"teamID"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"createdAt"`
}

type adminKey struct {
	KeyID      string     `json:"keyID"`
	TeamID     string     `json:"teamID"`
	Name       string     `json:"name"`
	Prefix     string     `json:"prefix"`
	CreatedAt  time.Time  `json:"createdAt"`
	LastUsedAt *time.Time `json:"lastUsedAt"`
	Key        string     `json:"key"`
}

// newTeamCmd is `cocoon team create|list`.
func newTeamCmd(g *globalFlags) *cobra.Command {
	a := &adminFlags{}
	cmd := &cobra.Command{Use: "team", Short: "Manage teams (needs the admin token)"}
	a.register(cmd)
	cmd.AddCommand(&cobra.Command{
		Use:   "create NAME",
		Short: "Create a team and print its ID",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newAdminClient(g, a)
			if err != nil {
				return err
			}
			var t adminTeam
			if err := c.do(cmd.Context(), http.MethodPost, "/admin/teams", map[string]string{"name": args[0]}, &t); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), t.TeamID)
			return nil
		},
	}, &cobra.Command{
		Use:   "list",
		Short: "List teams",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newAdminClient(g, a)
			if err != nil {
				return err
			}
			var ts []adminTeam
			if err := c.do(cmd.Context(), http.MethodGet, "/admin/teams", nil, &ts); err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tNAME\tCREATED")
			for _, t := range ts {
				fmt.Fprintf(w, "%s\t%s\t%s\n", t.TeamID, t.Name, t.CreatedAt.Format(time.RFC3339))
			}
			return w.Flush()
		},
	})
	return cmd
}

// newKeyCmd is `cocoon key create|list|delete`.
func newKeyCmd(g *globalFlags) *cobra.Command {
	a := &adminFlags{}
	cmd := &cobra.Command{Use: "key", Short: "Manage API keys (needs the admin token)"}
	a.register(cmd)

	var team, name string
	create := &cobra.Command{
		Use:   "create --team ID [--name NAME]",
		Short: "Create an API key and print it (it is shown only once)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newAdminClient(g, a)
			if err != nil {
				return err
			}
			var k adminKey
			path := "/admin/teams/" + url.PathEscape(team) + "/keys"
			if err := c.do(cmd.Context(), http.MethodPost, path, map[string]string{"name": name}, &k); err != nil {
				return err
			}
			if k.Key == "" {
				return errors.New("the api returned no key")
			}
			fmt.Fprintln(cmd.OutOrStdout(), k.Key)
			fmt.Fprintf(cmd.ErrOrStderr(), "key %s created for team %s; store it now, it is not shown again\n", k.KeyID, k.TeamID)
			return nil
		},
	}
	create.Flags().StringVar(&team, "team", "", "team ID")
	create.Flags().StringVar(&name, "name", "", "a name to recognise the key by")
	_ = create.MarkFlagRequired("team")

	var listTeam string
	list := &cobra.Command{
		Use:   "list --team ID",
		Short: "List a team's API keys (never the keys themselves)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newAdminClient(g, a)
			if err != nil {
				return err
			}
			var ks []adminKey
			if err := c.do(cmd.Context(), http.MethodGet, "/admin/teams/"+url.PathEscape(listTeam)+"/keys", nil, &ks); err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tNAME\tPREFIX\tCREATED\tLAST USED")
			for _, k := range ks {
				last := "never"
				if k.LastUsedAt != nil {
					last = k.LastUsedAt.Format(time.RFC3339)
				}
				fmt.Fprintf(w, "%s\t%s\t%s…\t%s\t%s\n", k.KeyID, k.Name, k.Prefix, k.CreatedAt.Format(time.RFC3339), last)
			}
			return w.Flush()
		},
	}
	list.Flags().StringVar(&listTeam, "team", "", "team ID")
	_ = list.MarkFlagRequired("team")

	del := &cobra.Command{
		Use:   "delete KEY_ID",
		Short: "Revoke an API key",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newAdminClient(g, a)
			if err != nil {
				return err
			}
			return c.do(cmd.Context(), http.MethodDelete, "/admin/keys/"+url.PathEscape(args[0]), nil, nil)
		},
	}
	cmd.AddCommand(create, list, del)
	return cmd
}
