package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"

	"github.com/spf13/cobra"
)

// tlsFlags: the public listeners (api, proxy) serve TLS from certificate
// files when both are given.
type tlsFlags struct {
	cert, key string
}

func (t *tlsFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&t.cert, "tls-cert", envOr("COCOON_TLS_CERT", ""), "PEM certificate (chain) for TLS on the api and proxy listeners")
	fl.StringVar(&t.key, "tls-key", envOr("COCOON_TLS_KEY", ""), "PEM private key of --tls-cert")
}

// config loads the certificate; nil when TLS is off.
func (t *tlsFlags) config() (*tls.Config, error) {
	if t.cert == "" && t.key == "" {
		return nil, nil
	}
	if t.cert == "" || t.key == "" {
		return nil, errors.New("TLS needs both --tls-cert and --tls-key")
	}
	c, err := tls.LoadX509KeyPair(t.cert, t.key)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{c}, MinVersion: tls.VersionTLS12}, nil
}

// scheme is the URL scheme of a listener with tc.
func scheme(tc *tls.Config) string {
	if tc != nil {
		return "https"
	}
	return "http"
}

// serveListener serves srv on ln, over TLS (HTTP/2 and HTTP/1.1) when tc
// is set, else plain HTTP/1.1 and h2c.
func serveListener(srv *http.Server, ln net.Listener, tc *tls.Config) error {
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	if tc == nil {
		srv.Protocols.SetUnencryptedHTTP2(true)
		return srv.Serve(ln)
	}
	srv.Protocols.SetHTTP2(true)
	srv.TLSConfig = tc.Clone()
	return srv.ServeTLS(ln, "", "")
}
