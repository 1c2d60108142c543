package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cocoon test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"49983-sbx.sb.example"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(c)
	return certFile, keyFile, pool
}

// TestServeTLS: the public listeners serve TLS (HTTP/2 and HTTP/1.1) from
// certificate files; plain HTTP to them is refused.
func TestServeTLS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	tc, err := (&tlsFlags{cert: certFile, key: keyFile}).config()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			http.Error(w, "not over TLS", http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})}
	done := make(chan error, 1)
	go func() { done <- serveListener(srv, ln, tc) }()
	defer func() {
		srv.Close()
		<-done
	}()
	url := "https://" + ln.Addr().String() + "/health"

	for _, h2 := range []bool{true, false} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: h2}
		if !h2 {
			tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
		}
		resp, err := (&http.Client{Transport: tr}).Get(url)
		if err != nil {
			t.Fatalf("h2 %v: %v", h2, err)
		}
		resp.Body.Close()
		if want := map[bool]int{true: 2, false: 1}[h2]; resp.StatusCode != http.StatusNoContent || resp.ProtoMajor != want {
			t.Errorf("h2 %v: got %d over HTTP/%d, want 204 over HTTP/%d", h2, resp.StatusCode, resp.ProtoMajor, want)
		}
		tr.CloseIdleConnections()
	}
	// Plain HTTP gets no answer from the handler.
	resp, err := http.Get("http://" + ln.Addr().String() + "/health")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusNoContent {
			t.Errorf("plain HTTP served: %d", resp.StatusCode)
		}
	}
}

func TestTLSFlags(t *testing.T) {
	certFile, keyFile, _ := selfSigned(t)
	tests := []struct {
		name      string
		cert, key string
		wantNil   bool
		wantErr   bool
	}{
		{"off", "", "", true, false},
		{"both", certFile, keyFile, false, false},
		{"cert only", certFile, "", true, true},
		{"key only", "", keyFile, true, true},
		{"swapped", keyFile, certFile, true, true},
	}
	for _, tt := range tests {
		tc, err := (&tlsFlags{cert: tt.cert, key: tt.key}).config()
		if (err != nil) != tt.wantErr || (tc == nil) != tt.wantNil {
			t.Errorf("%s: got %v, %v; want nil %v, error %v", tt.name, tc != nil, err, tt.wantNil, tt.wantErr)
		}
	}
}
