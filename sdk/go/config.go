package cocoon

import (
	"errors"
	"net/http"
	"os"
	"strings"
	"time"
)

// DefaultDomain is E2B's domain, used when neither Config.Domain nor
// E2B_DOMAIN names another.
const DefaultDomain = "e2b.app"

// EnvdPort is the port of envd, the daemon inside every sandbox.
const EnvdPort = 49983

// Config says where the API and the sandboxes are and how to authenticate.
// A zero field is read from the environment variable the official E2B SDKs
// read.
type Config struct {
	// APIKey authenticates every API call (E2B_API_KEY).
	APIKey string
	// APIURL is the REST control plane (E2B_API_URL); default
	// https://api.<Domain>.
	APIURL string
	// SandboxURL, when set, is one base URL for every sandbox: requests carry
	// E2b-Sandbox-Id and E2b-Sandbox-Port headers (E2B_SANDBOX_URL). When
	// empty, sandboxes are reached at https://<port>-<id>.<domain>.
	SandboxURL string
	// Domain is E2B_DOMAIN; default DefaultDomain.
	Domain string
	// HTTPClient carries every request; nil means a client with no overall
	// timeout (command and watch streams last as long as they last).
	HTTPClient *http.Client
	// MaxRetries is how many times an idempotent call is retried after a
	// connection error, a 429 or a 502/503/504; 0 means 2, negative none.
	MaxRetries int
	// RequestTimeout bounds each non-streaming request; 0 means 60 s.
	RequestTimeout time.Duration
	// Debug (E2B_DEBUG=true), as in the official SDKs: no API calls;
	// Create and Connect return a sandbox whose envd is
	// http://localhost:49983 (or SandboxURL), Kill does nothing.
	Debug bool
}

// ConfigFromEnv returns the Config the environment describes (E2B_API_KEY,
// E2B_API_URL, E2B_SANDBOX_URL, E2B_DOMAIN).
func ConfigFromEnv() Config {
	return Config{
		APIKey:     os.Getenv("E2B_API_KEY"),
		APIURL:     os.Getenv("E2B_API_URL"),
		SandboxURL: os.Getenv("E2B_SANDBOX_URL"),
		Domain:     os.Getenv("E2B_DOMAIN"),
		Debug:      os.Getenv("E2B_DEBUG") == "true",
	}
}

// ErrNoAPIKey: neither Config.APIKey nor E2B_API_KEY has a key.
var ErrNoAPIKey = errors.New("no API key: set E2B_API_KEY (or Config.APIKey)")

// withDefaults fills c's zero fields from the environment and defaults.
func (c Config) withDefaults() (Config, error) {
	env := ConfigFromEnv()
	if c.APIKey == "" {
		c.APIKey = env.APIKey
	}
	if c.APIURL == "" {
		c.APIURL = env.APIURL
	}
	if c.SandboxURL == "" {
		c.SandboxURL = env.SandboxURL
	}
	if c.Domain == "" {
		c.Domain = env.Domain
	}
	c.Debug = c.Debug || env.Debug
	if c.Domain == "" {
		c.Domain = DefaultDomain
	}
	if c.APIURL == "" {
		c.APIURL = "https://api." + c.Domain
	}
	c.APIURL = strings.TrimRight(c.APIURL, "/")
	c.SandboxURL = strings.TrimRight(c.SandboxURL, "/")
	if c.APIKey == "" {
		return c, ErrNoAPIKey
	}
	if c.HTTPClient == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// Every running command holds a connection; keep enough idle ones
		// for a few dozen concurrent commands to a sandbox.
		t.MaxIdleConnsPerHost = 64
		c.HTTPClient = &http.Client{Transport: t}
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = 2
	}
	if c.MaxRetries < 0 {
		c.MaxRetries = 0
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 60 * time.Second
	}
	return c, nil
}
